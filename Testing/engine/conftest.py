import numpy as np
import pytest
import yaml
from sdenhance.io import Volume, write_volume
from sdenhance.phantom import torso_phantom
from sdenhance.testing import make_tiny_checkpoint


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that pins torch to one thread (as a training run does) must not leave later tests on one: results
    of the same run differ in the last bits between thread counts, and tests compare runs in and out of process."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture
def train_config_file(tmp_path):
    """A tiny MRI-noise run on two procedural phantoms (fast degradation, real pipeline)."""
    for i in range(2):
        phantom = torso_phantom((16, 40, 40), (2.0, 2.0, 3.0), seed=i)
        mri_like = Volume((phantom.array.astype(np.float32) + 1024) / 4, phantom.spacing)
        write_volume(mri_like, tmp_path / f"p{i}.nii.gz")
    config = {
        "name": "tiny",
        "task": "denoise",
        "modality": "mri",
        "degradation": {"kind": "mri_rician", "snr": [5, 10]},
        "train_files": ["p0.nii.gz"],
        "val_files": ["p1.nii.gz"],
        "val_crop": [16, 32, 32],
        "realisations": 2,
        "model": {"channels": [8, 16], "time_dim": 16, "stm_dim": 8, "groups": 4},
        "schedule": {"steps": 2},
        "patch_size": [8, 16, 16],
        "batch_size": 2,
        "max_steps": 6,
        "log_every": 1,
        "val_every": 6,
        "ckpt_every": 3,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
