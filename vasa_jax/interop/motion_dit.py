"""Convert MotionDiT weights between our Flax NNX model and the PyTorch baseline
(``baselines/torch_baseline/motion_dit.py``), and read/write them as safetensors or ``.pt`` files.

Names: the torch ``state_dict`` name of a Flax variable is its path joined with dots, with
``kernel`` renamed ``weight``; the tensor layouts differ as follows:

- ``nnx.Linear`` kernel (in, out)          <-> ``nn.Linear`` weight (out, in)
- attention q/k/v (width, heads, head_dim) <-> ``<...>.attn.q.weight`` (heads * head_dim, width)
- attention o (heads, head_dim, width)     <-> ``<...>.attn.o.weight`` (width, heads * head_dim)
- ``segment``, ``emotion_table`` (n, width) <-> ``nn.Embedding`` ``<name>.weight``
- everything else (null embeddings, ``position``, block ``table``s, the ``Stat`` buffers
  ``motion_mean`` ...) keeps its name and layout.

Only numpy crosses the boundary: ``flax_to_torch`` returns numpy arrays (wrap with
``torch.from_numpy`` for ``load_state_dict``), ``torch_to_flax`` accepts torch tensors or numpy.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.interop import files
# The weight-file readers/writers live in ``files`` (shared by every converter); re-exported.
from vasa_jax.interop.files import load_safetensors, load_torch_checkpoint, save_safetensors

__all__ = ["torch_names", "flax_to_torch", "check_state_dict", "torch_to_flax", "randomize",
           "save_safetensors", "load_safetensors", "load_torch_checkpoint"]

_EMBEDDINGS = ("segment", "emotion_table")
_QKV = ("q", "k", "v")


def _rule(path: tuple, shape: tuple[int, ...]) -> tuple[str, Callable, Callable]:
    """(torch name, flax -> torch array, torch -> flax array) for one Flax variable."""
    names = [str(p) for p in path]
    ident = lambda a: a  # noqa: E731
    last = names[-1]
    if last == "kernel":  # nnx.Linear
        return ".".join(names[:-1] + ["weight"]), lambda a: a.T, lambda a: a.T
    if len(names) >= 2 and names[-2] == "attn" and last in _QKV:
        width, heads, hd = shape
        return (".".join(names + ["weight"]),
                lambda a: a.reshape(width, heads * hd).T,
                lambda a: a.T.reshape(width, heads, hd))
    if len(names) >= 2 and names[-2] == "attn" and last == "o":
        heads, hd, width = shape
        return (".".join(names + ["weight"]),
                lambda a: a.reshape(heads * hd, width).T,
                lambda a: a.T.reshape(heads, hd, width))
    if len(names) == 1 and last in _EMBEDDINGS:
        return last + ".weight", ident, ident
    return ".".join(names), ident, ident


# The public torch_names(model_or_state), flax_to_torch(state), check_state_dict(state_dict,
# model) and torch_to_flax(state_dict, model): ``files.Converter``'s, with MotionDiT's rule.
torch_names, flax_to_torch, check_state_dict, torch_to_flax = files.Converter(
    _rule, "MotionDiT").functions()


def randomize(model: nnx.Module, seed: int, *, scale: float = 1.0) -> nnx.Module:
    """Overwrite every parameter and statistic of ``model`` with deterministic random values
    (numpy ``default_rng(seed)``, in sorted-path order): kernels ~ N(0, 1/fan_in), biases,
    tables and embeddings ~ N(0, 0.3^2), means ~ N(0, 1), stds ~ U(0.5, 1.5), all times
    ``scale`` (stds excepted). For conversion and parity tests, where the zero-initialised
    adaLN projections and output head would hide mistakes."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    for path, var in files.flat_variables(state):
        old = var.get_value()
        shape = tuple(np.shape(old))
        last = str(path[-1])
        if last.endswith("_std"):
            value = rng.uniform(0.5, 1.5, shape)
        elif last.endswith("_mean"):
            value = rng.normal(0.0, 1.0, shape)
        elif last == "kernel" or last in _QKV:
            value = rng.normal(0.0, scale / np.sqrt(shape[0]), shape)
        elif last == "o":
            value = rng.normal(0.0, scale / np.sqrt(shape[0] * shape[1]), shape)
        else:
            value = rng.normal(0.0, 0.3 * scale, shape)
        var.set_value(jnp.asarray(value, dtype=old.dtype))
    nnx.update(model, state)
    return model
