"""Convert MotionDiT weights between our Flax NNX model and the PyTorch baseline
(``baselines/torch/motion_dit.py``), and read/write them as safetensors or ``.pt`` files.

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

import os
import tempfile
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

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


def _flat_variables(state_or_model: Any) -> list[tuple[tuple, Any]]:
    state = (nnx.state(state_or_model) if isinstance(state_or_model, nnx.Module)
             else state_or_model)
    return list(nnx.to_flat_state(state))


def torch_names(model_or_state: Any) -> dict[str, tuple[int, ...]]:
    """The torch ``state_dict`` names and shapes that correspond to a Flax MotionDiT."""
    out = {}
    for path, var in _flat_variables(model_or_state):
        shape = tuple(np.shape(var.get_value()))
        name, to_t, _ = _rule(path, shape)
        out[name] = tuple(to_t(np.empty(shape, np.float32)).shape)
    return out


def flax_to_torch(state: Any) -> dict[str, np.ndarray]:
    """Flax MotionDiT state (``nnx.state(model)``, or the model) -> torch-named numpy arrays
    (parameters and the normalisation statistics), float32, C-contiguous."""
    out = {}
    for path, var in _flat_variables(state):
        value = np.asarray(var.get_value(), dtype=np.float32)
        name, to_t, _ = _rule(path, value.shape)
        out[name] = np.ascontiguousarray(to_t(value))
    return out


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (no torch import needed)
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def check_state_dict(state_dict: Mapping[str, Any], model: nnx.Module) -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped tensor."""
    want = torch_names(model)
    got = {k: tuple(np.shape(v)) if not hasattr(v, "shape") else tuple(v.shape)
           for k, v in state_dict.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    bad = sorted(f"{k}: got {got[k]}, expected {want[k]}"
                 for k in set(want) & set(got) if got[k] != want[k])
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if bad:
        problems.append(f"mis-shaped tensors [{'; '.join(bad)}]")
    if problems:
        raise ValueError(
            "The state_dict does not match this MotionDiT (check that config.model matches the "
            "checkpoint's): " + ", ".join(problems) + ".")


def torch_to_flax(state_dict: Mapping[str, Any], model: nnx.Module) -> nnx.Module:
    """Load a torch-named state_dict (torch tensors or numpy arrays) into ``model`` in place
    and return it. Every tensor must be present with the right shape (else ValueError)."""
    check_state_dict(state_dict, model)
    state = nnx.state(model)
    for path, var in _flat_variables(state):
        old = var.get_value()
        name, _, from_t = _rule(path, tuple(np.shape(old)))
        var.set_value(jnp.asarray(from_t(_to_numpy(state_dict[name])), dtype=old.dtype))
    nnx.update(model, state)
    return model


# -- files -------------------------------------------------------------------------------------

def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write torch-named numpy arrays (e.g. ``flax_to_torch(state)``) to a safetensors file,
    atomically (temporary file in the same directory, then rename)."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".safetensors.tmp", dir=directory)
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a safetensors file into numpy arrays (no torch needed)."""
    from safetensors.numpy import load_file

    if not os.path.exists(path):
        raise FileNotFoundError(f"No safetensors file at {os.fspath(path)!r}.")
    return load_file(os.fspath(path))


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.pt`` file saved with ``torch.save(model.state_dict(), path)`` (or a dict holding
    it under ``state_dict``) into numpy arrays. Uses ``torch.load(weights_only=True)``, so the
    file cannot run code."""
    import torch

    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {os.fspath(path)!r}.")
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state_dict (a mapping of names "
                         "to tensors).")
    return {k: _to_numpy(v) for k, v in obj.items()}


def randomize(model: nnx.Module, seed: int, *, scale: float = 1.0) -> nnx.Module:
    """Overwrite every parameter and statistic of ``model`` with deterministic random values
    (numpy ``default_rng(seed)``, in sorted-path order): kernels ~ N(0, 1/fan_in), biases,
    tables and embeddings ~ N(0, 0.3^2), means ~ N(0, 1), stds ~ U(0.5, 1.5), all times
    ``scale`` (stds excepted). For conversion and parity tests, where the zero-initialised
    adaLN projections and output head would hide mistakes."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    for path, var in _flat_variables(state):
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
