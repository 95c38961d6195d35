import numpy as np
import pytest
from sdenhance.io import Volume, write_volume
from sdenhance.testing import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Random-weight checkpoints of the real format: denoise and SR (x2 along z), CT."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "denoise": make_tiny_checkpoint(folder, task="denoise"),
        "sr": make_tiny_checkpoint(folder, task="sr", sr_factor=2, sr_axis="z"),
    }


@pytest.fixture
def ct_file(tmp_path):
    """A small oblique, anisotropic int16 CT-like volume on disk."""
    rng = np.random.default_rng(0)
    array = (rng.normal(40, 30, (10, 24, 20)) + np.linspace(-900, 300, 20)).astype(np.int16)
    volume = Volume(array, (0.75, 0.8, 2.5), (12.0, -7.5, 100.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return write_volume(volume, tmp_path / "ct.nrrd")
