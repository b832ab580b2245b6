"""What every weight converter in ``vasa_jax.interop`` shares: weight files (safetensors,
``.pt`` read with ``weights_only=True``), the name/shape check of a torch ``state_dict`` against a
Flax model, and the rule-driven conversion loops.

A model's converter module (e.g. ``vasa_jax.interop.motion_dit``) supplies one *rule*:
``rule(path, shape) -> (torch name, flax -> torch array, torch -> flax array)`` for a Flax
variable at ``path`` (a tuple of keys) of shape ``shape``; the functions here apply it to every
variable, and ``Converter(rule, what)`` binds it, with the model's name for errors, into the
module's public functions. Only numpy crosses the boundary, and nothing here imports torch except
``load_torch_checkpoint``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.atomic import atomic_path

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


def shape_mismatches(got: Mapping[str, tuple[int, ...]], want: Mapping[str, tuple[int, ...]]
                     ) -> str:
    """An empty string when the {name: shape} ``got`` has exactly the names and shapes of
    ``want``; else one phrase naming every missing, unexpected and mis-shaped tensor (for an
    error message)."""
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    bad = sorted(f"{k}: got {tuple(got[k])}, expected {tuple(want[k])}"
                 for k in set(want) & set(got) if tuple(got[k]) != tuple(want[k]))
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if bad:
        problems.append(f"mis-shaped tensors [{'; '.join(bad)}]")
    return ", ".join(problems)


def check_state_dict(state_dict: Mapping[str, Any], want: Mapping[str, tuple[int, ...]],
                     what: str) -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped tensor of
    ``state_dict`` against the expected {name: shape} ``want`` of the model ``what``."""
    got = {k: tuple(np.shape(v)) if not hasattr(v, "shape") else tuple(v.shape)
           for k, v in state_dict.items()}
    problems = shape_mismatches(got, want)
    if problems:
        raise ValueError(
            f"The state_dict does not match this {what} (check that config.model matches the "
            "checkpoint's): " + problems + ".")


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


@dataclasses.dataclass(frozen=True)
class Converter:
    """One model's converter: its ``rule`` bound to the model name ``what`` that errors name.
    A converter module exposes the bound methods (``functions()``) as its public functions."""

    rule: Rule
    what: str

    def torch_names(self, model_or_state: Any) -> dict[str, tuple[int, ...]]:
        """{torch name: torch shape} for every variable of a Flax model (or state)."""
        return torch_names(model_or_state, self.rule)

    def flax_to_torch(self, state: Any) -> dict[str, np.ndarray]:
        """Flax state (``nnx.state(model)``, the model, or a sub-state such as parameters or
        their gradients) -> {torch name: float32 C-contiguous numpy array}."""
        return flax_to_torch(state, self.rule)

    def check_state_dict(self, state_dict: Mapping[str, Any], model: nnx.Module) -> None:
        """Raise ValueError naming every missing, unexpected and mis-shaped tensor."""
        check_state_dict(state_dict, self.torch_names(model), self.what)

    def torch_to_flax(self, state_dict: Mapping[str, Any], model: nnx.Module) -> nnx.Module:
        """Load a torch-named state_dict (torch tensors or numpy arrays) into ``model`` (which
        may be abstract, from ``nnx.eval_shape``) in place and return it. Every tensor must be
        present with the right shape (else ValueError)."""
        return torch_to_flax(state_dict, model, self.rule, self.what)

    def functions(self) -> tuple[Callable, Callable, Callable, Callable]:
        """The bound (torch_names, flax_to_torch, check_state_dict, torch_to_flax): what a
        converter module exposes under those names."""
        return self.torch_names, self.flax_to_torch, self.check_state_dict, self.torch_to_flax


# -- files -------------------------------------------------------------------------------------

def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write torch-named numpy arrays (e.g. a converter's ``flax_to_torch(state)``) to a
    safetensors file, atomically (temporary file in the same directory, then rename)."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata) if metadata else None)


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
