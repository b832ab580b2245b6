"""Convert FaceLatentModel (stage 1) weights between our Flax NNX model and the PyTorch baseline
(``baselines/torch_baseline/face_latent.py``); files are read and written with
``vasa_jax.interop.files`` (safetensors, or ``.pt`` with ``torch.load(weights_only=True)``).

Names: the torch ``state_dict`` name of a Flax variable is its path joined with dots, with
``kernel`` renamed ``weight`` and GroupNorm ``scale`` renamed ``weight``. Layouts:

- ``nnx.Linear`` kernel (in, out)                 <-> ``nn.Linear`` weight (out, in)
- 2-D convolution kernel (kh, kw, in, out)        <-> ``nn.Conv2d`` weight (out, in, kh, kw)
- 3-D convolution kernel (kd, kh, kw, in, out)    <-> ``nn.Conv3d`` weight (out, in, kd, kh, kw)
- the encoders' ``stem`` (input channels) and ``g2d.to_rgb`` (output channels, weight and bias)
  also reorder channels: our space-to-depth puts pixel (i, j) of a p x p patch, colour c, at
  channel (i p + j) 3 + c; ``F.pixel_unshuffle`` / ``F.pixel_shuffle`` at c p^2 + i p + j
- everything else (biases, residual ``gain``s) keeps its name and layout.

Only numpy crosses the boundary: ``flax_to_torch`` returns numpy arrays (wrap with
``torch.from_numpy`` for ``load_state_dict``), ``torch_to_flax`` accepts torch tensors or numpy.

    sd = flax_to_torch(nnx.state(model))              # -> torch_model.load_state_dict(...)
    files.save_safetensors("stage1.safetensors", sd)
    torch_to_flax(files.load_weights("stage1.pt"), make_face_latent_model(cfg, rngs=...))
"""

from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.interop import files

_STEMS = (("appearance", "stem"), ("motion", "stem"))
_TO_RGB = ("g2d", "to_rgb")


def _patch_perm(channels: int) -> np.ndarray:
    """perm with torch channel t = flax channel perm[t] for a 3 p^2-channel patch layout."""
    p = math.isqrt(channels // 3)
    if 3 * p * p != channels:
        raise ValueError(f"{channels} channels are not 3 p^2 (a space-to-depth layout).")
    return np.arange(channels).reshape(p * p, 3).T.reshape(-1)


def _kernel_rule(ndim: int, in_perm: bool, out_perm: bool, shape: tuple
                 ) -> tuple[Callable, Callable]:
    """Flax conv kernel (k..., in, out) <-> torch (out, in, k...), with channel reorders."""
    if ndim == 2:  # nnx.Linear
        return (lambda a: a.T), (lambda a: a.T)
    to_t_axes = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
    from_t_axes = tuple(int(i) for i in np.argsort(to_t_axes))
    pin = _patch_perm(shape[-2]) if in_perm else None
    pout = _patch_perm(shape[-1]) if out_perm else None

    def to_t(a):
        a = a.transpose(to_t_axes)
        if pout is not None:
            a = a[pout]
        if pin is not None:
            a = a[:, pin]
        return a

    def from_t(a):
        if pout is not None:
            a = a[np.argsort(pout)]
        if pin is not None:
            a = a[:, np.argsort(pin)]
        return a.transpose(from_t_axes)

    return to_t, from_t


def _rule(path: tuple, shape: tuple[int, ...]) -> tuple[str, Callable, Callable]:
    """(torch name, flax -> torch array, torch -> flax array) for one Flax variable."""
    names = [str(p) for p in path]
    ident = lambda a: a  # noqa: E731
    last, owner = names[-1], tuple(names[:-1])
    if last == "kernel":
        to_t, from_t = _kernel_rule(len(shape), owner in _STEMS, owner == _TO_RGB, shape)
        return ".".join(names[:-1] + ["weight"]), to_t, from_t
    if last == "bias" and owner == _TO_RGB:
        perm = _patch_perm(shape[0])
        return ".".join(names), (lambda a: a[perm]), (lambda a: a[np.argsort(perm)])
    if last == "scale":  # GroupNorm
        return ".".join(names[:-1] + ["weight"]), ident, ident
    return ".".join(names), ident, ident


# The public torch_names(model_or_state), flax_to_torch(state), check_state_dict(state_dict,
# model) and torch_to_flax(state_dict, model): ``files.Converter``'s, with FaceLatentModel's rule.
torch_names, flax_to_torch, check_state_dict, torch_to_flax = files.Converter(
    _rule, "FaceLatentModel").functions()


def randomize(model: nnx.Module, seed: int, *, scale: float = 1.0) -> nnx.Module:
    """Overwrite every parameter with deterministic random values (numpy ``default_rng(seed)``
    in sorted-path order), for conversion and parity tests, where the zero-initialised layers
    (pose head, adaptive-norm projections, flow outputs) and unit norms would hide mistakes:
    kernels ~ N(0, 1/fan_in) (the pose head, the adaptive-norm projections and the flow
    outputs scaled down so that poses, norms and flows stay moderate), biases ~ N(0, 0.1^2),
    GroupNorm scales ~ 1 + N(0, 0.1^2), residual gains ~ U(0.2, 1), all times ``scale``.
    ``model`` may be abstract (``nnx.eval_shape``), which skips the costly initialisation."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    for path, var in files.flat_variables(state):
        old = var.get_value()
        shape = tuple(old.shape)
        names = [str(p) for p in path]
        last = names[-1]
        if last == "kernel":
            std = scale / np.sqrt(np.prod(shape[:-1]))
            if names[-2] == "pose" or names[-2] == "proj":
                std *= 0.3
            elif names[-2] == "out" and names[0].startswith("warp"):
                std *= 0.05
            value = rng.normal(0.0, std, shape)
        elif last == "scale":
            value = 1.0 + rng.normal(0.0, 0.1 * scale, shape)
        elif last == "gain":
            value = rng.uniform(0.2, 1.0, shape)
        else:
            value = rng.normal(0.0, 0.1 * scale, shape)
        var.set_value(jnp.asarray(value, dtype=old.dtype))
    nnx.update(model, state)
    return model
