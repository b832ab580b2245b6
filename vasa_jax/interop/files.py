"""What every weight converter in ``vasa_jax.interop`` shares: weight files (safetensors,
``.pt`` read with ``weights_only=True``), the name/shape check of a torch ``state_dict`` against a
Flax model, and the rule-driven conversion loops.

A model's converter module (e.g. ``vasa_jax.interop.motion_dit``) supplies one *rule*:
``rule(path, shape) -> (torch name, flax -> torch array, torch -> flax array)`` for a Flax
variable at ``path`` (a tuple of keys) of shape ``shape``; the functions here apply it to every
variable. Only numpy crosses the boundary, and nothing here imports torch except
``load_torch_checkpoint``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

Rule = Callable[[tuple, tuple], tuple[str, Callable, Callable]]


# -- conversion --------------------------------------------------------------------------------

def flat_variables(state_or_model: Any) -> list[tuple[tuple, Any]]:
    """[(path, variable)] of an ``nnx.State`` or a module, in Flax's (sorted) order."""
    state = (nnx.state(state_or_model) if isinstance(state_or_model, nnx.Module)
             else state_or_model)
    return list(nnx.to_flat_state(state))


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (without importing torch), jax or numpy array -> float32 numpy."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def torch_names(model_or_state: Any, rule: Rule) -> dict[str, tuple[int, ...]]:
    """{torch name: torch shape} for every variable of a Flax model (or state)."""
    out = {}
    for path, var in flat_variables(model_or_state):
        shape = tuple(var.get_value().shape)  # also for abstract (eval_shape) models
        name, to_t, _ = rule(path, shape)
        if name in out:
            raise AssertionError(f"Two Flax variables map to the torch name {name!r}.")
        out[name] = tuple(to_t(np.empty(shape, np.float32)).shape)
    return out


def flax_to_torch(state: Any, rule: Rule) -> dict[str, np.ndarray]:
    """Flax state (or model) -> {torch name: float32 C-contiguous numpy array}."""
    out = {}
    for path, var in flat_variables(state):
        value = np.asarray(var.get_value(), dtype=np.float32)
        name, to_t, _ = rule(path, value.shape)
        out[name] = np.ascontiguousarray(to_t(value))
    return out


def check_state_dict(state_dict: Mapping[str, Any], want: Mapping[str, tuple[int, ...]],
                     what: str) -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped tensor of
    ``state_dict`` against the expected {name: shape} ``want`` of the model ``what``."""
    got = {k: tuple(np.shape(v)) if not hasattr(v, "shape") else tuple(v.shape)
           for k, v in state_dict.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    bad = sorted(f"{k}: got {got[k]}, expected {tuple(want[k])}"
                 for k in set(want) & set(got) if got[k] != tuple(want[k]))
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if bad:
        problems.append(f"mis-shaped tensors [{'; '.join(bad)}]")
    if problems:
        raise ValueError(
            f"The state_dict does not match this {what} (check that config.model matches the "
            "checkpoint's): " + ", ".join(problems) + ".")


def torch_to_flax(state_dict: Mapping[str, Any], model: nnx.Module, rule: Rule, what: str
                  ) -> nnx.Module:
    """Load a torch-named state_dict (torch tensors or numpy arrays) into ``model`` in place
    and return it; every tensor must be present with the right shape (else ValueError).
    ``model`` may be abstract (``nnx.eval_shape``): its variables are then filled in."""
    check_state_dict(state_dict, torch_names(model, rule), what)
    state = nnx.state(model)
    for path, var in flat_variables(state):
        old = var.get_value()
        name, _, from_t = rule(path, tuple(old.shape))
        var.set_value(jnp.asarray(from_t(to_numpy(state_dict[name])), dtype=old.dtype))
    nnx.update(model, state)
    return model


# -- files -------------------------------------------------------------------------------------

def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write torch-named numpy arrays (e.g. a converter's ``flax_to_torch(state)``) to a
    safetensors file, atomically (temporary file in the same directory, then rename)."""
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
    """Read a safetensors file into numpy arrays (no torch needed, no code can run)."""
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
    return {k: to_numpy(v) for k, v in obj.items()}


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file or a torch ``.pt``/``.pth``/``.bin`` state_dict (read with
    ``weights_only=True``) -> numpy arrays, chosen by the file's extension."""
    name = os.fspath(path)
    if name.endswith(".safetensors"):
        return load_safetensors(name)
    if name.endswith((".pt", ".pth", ".bin", ".ckpt")):
        return load_torch_checkpoint(name)
    raise ValueError(f"Unknown weight file type {name!r}: use .safetensors or a torch "
                     ".pt/.pth state_dict.")
