import numpy as np
import pytest
from sdenhance.normalize import Normalizer, output_dtype


@pytest.mark.parametrize("modality", ["ct", "mri", "pet"])
def test_inverse_is_exact_within_the_valid_range(modality):
    rng = np.random.default_rng(0)
    values = {
        "ct": rng.uniform(-1024, 3071, 5000),
        "mri": rng.gamma(2.0, 300.0, 5000),
        "pet": rng.gamma(1.0, 5000.0, 5000),
    }[modality].astype(np.float32)
    normalizer = Normalizer.fit(values, modality)
    np.testing.assert_allclose(normalizer.inverse(normalizer.forward(values)), values, rtol=1e-5, atol=1e-2)


def test_ct_is_fixed_hounsfield_scaling_with_clipping():
    normalizer = Normalizer.fit(np.array([0.0, 1.0]), "ct")
    np.testing.assert_allclose(
        normalizer.forward(np.array([-3024.0, -1000.0, 0.0, 5000.0])), [-1.024, -1.0, 0.0, 3.071]
    )


def test_mri_percentiles_map_to_unit_range():
    values = np.linspace(0, 1000, 100001).astype(np.float32)
    normalized = Normalizer.fit(values, "mri").forward(values)
    assert np.percentile(normalized, 0.5) == pytest.approx(0.0, abs=1e-4)
    assert np.percentile(normalized, 99.5) == pytest.approx(1.0, abs=1e-4)


def test_pet_scale_is_body_mean_and_unit_free():
    rng = np.random.default_rng(1)
    body = rng.gamma(4.0, 1.0, 10000).astype(np.float32)
    volume = np.concatenate([np.zeros(10000, np.float32), body])
    a, b = Normalizer.fit(volume, "pet"), Normalizer.fit(volume * 37.0, "pet")  # e.g. kBq/mL vs SUV
    np.testing.assert_allclose(a.forward(volume), b.forward(volume * 37.0), rtol=1e-5, atol=1e-6)


def test_output_dtype():
    assert output_dtype(np.dtype(np.int16), "ct") == np.int16
    assert output_dtype(np.dtype(np.int16), "mri") == np.float32
    assert output_dtype(np.dtype(np.float32), "ct") == np.float32
