"""Weights shipped inside the package (``vasa_jax/assets``): fixed measuring instruments and
the pretrained motion estimator, so every evaluation uses the same rulers and a run needs no
retraining (issue 18, item 7). Retraining stays a command; ``ship`` turns a trained run into a
shipped file.

A shipped network ``NAME`` is two files in ``vasa_jax/assets``:
- ``NAME.npz``: its nnx state, one array per leaf, keyed by the leaf's path;
- ``NAME.json``: ``kind`` (the training task), ``config`` (the full training config, from which
  the network is rebuilt), ``step``, ``heldout`` (its accuracy on held-out identities, reported
  wherever its numbers are used), ``sha256`` of the npz (checked on every load) and
  ``command`` (how it was trained).

Reference one as ``package:NAME`` wherever a run directory is accepted
(``load_probe("package:probe_synthtalk64")`` in ``vasa_jax.instruments.load``, ``--set model.estimator_workdir=package:...``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vasa_jax.atomic import atomic_path, nan_to_none, none_to_nan
from vasa_jax.models import build_model

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
PREFIX = "package:"


def is_shipped(ref: str) -> bool:
    return str(ref).startswith(PREFIX)


def paths(ref: str, assets: str = ASSETS) -> tuple[str, str]:
    """``package:NAME`` (or ``NAME``) -> (npz path, json path)."""
    name = ref[len(PREFIX):] if is_shipped(ref) else ref
    return os.path.join(assets, name + ".npz"), os.path.join(assets, name + ".json")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _leaves(model: nnx.Module) -> list[tuple[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
    return [(jax.tree_util.keystr(p), leaf) for p, leaf in flat]


def ship(ref: str, model: nnx.Module, *, kind: str, config, step: int, heldout: dict,
         command: str, assets: str = ASSETS) -> tuple[str, str]:
    """Write ``model``'s state and its record (see the module docstring) as ``ref``; both
    files are written to temporaries first, so an interrupted call leaves no half file."""
    npz, meta = paths(ref, assets)
    arrays = {key: np.asarray(jax.device_get(v)) for key, v in _leaves(model)}
    with atomic_path(npz) as npz_tmp, atomic_path(meta) as meta_tmp:
        with open(npz_tmp, "wb") as f:
            np.savez(f, **arrays)
        record = {
            "kind": kind, "step": int(step), "command": command,
            "config": json.loads(config.to_json_best_effort()),
            "heldout": nan_to_none(heldout),
            "params": int(sum(a.size for a in arrays.values())),
            "sha256": _sha256(npz_tmp),
        }
        with open(meta_tmp, "w") as f:
            json.dump(record, f, indent=1, allow_nan=False)
    return npz, meta


def record(ref: str, assets: str = ASSETS) -> dict:
    """The json record of a shipped network (FileNotFoundError naming the known ones)."""
    npz, meta = paths(ref, assets)
    if not (os.path.exists(npz) and os.path.exists(meta)):
        known = sorted(f[:-5] for f in os.listdir(assets) if f.endswith(".json")) \
            if os.path.isdir(assets) else []
        raise FileNotFoundError(
            f"No shipped network {ref!r} (looked for {npz} and {meta}); shipped: "
            f"{', '.join(PREFIX + k for k in known) or 'none'}. Ship a trained run with "
            f"`vasa-jax ship --workdir RUN --name NAME`.")
    with open(meta) as f:
        rec = json.load(f)
    rec["heldout"] = none_to_nan(rec["heldout"])
    rec["config"] = ml_collections.ConfigDict(rec["config"])
    return rec


def load(ref: str, assets: str = ASSETS) -> tuple[nnx.Module, dict]:
    """(the shipped network, rebuilt from its record's config by ``vasa_jax.models``, with its
    weights; its record). ValueError when the npz does not match its recorded checksum or the
    rebuilt network."""
    rec = record(ref, assets)
    npz, _ = paths(ref, assets)
    digest = _sha256(npz)
    if digest != rec["sha256"]:
        raise ValueError(f"{npz} does not match the checksum in its record ({digest} != "
                         f"{rec['sha256']}): the file is corrupt or was replaced without "
                         f"re-shipping. Restore it from git or re-ship it (`vasa-jax ship`).")
    model = nnx.eval_shape(lambda: build_model(rec["config"], nnx.Rngs(0)))
    with np.load(npz) as data:
        stored = dict(data)
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    keys = [jax.tree_util.keystr(p) for p, _ in leaves]
    if sorted(keys) != sorted(stored):
        raise ValueError(f"{npz} does not fit the network its config builds (missing "
                         f"{sorted(set(keys) - set(stored))[:3]}, extra "
                         f"{sorted(set(stored) - set(keys))[:3]}).")
    for key, (_, leaf) in zip(keys, leaves):
        if tuple(stored[key].shape) != tuple(leaf.shape):
            raise ValueError(f"{npz}: {key} has shape {stored[key].shape}, the network "
                             f"{leaf.shape}.")
    values = [jnp.asarray(stored[k]) for k in keys]
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, values)), rec
