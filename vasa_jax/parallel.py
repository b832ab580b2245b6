"""Device mesh, logical-axis sharding, and global batches.

The mesh always has the axes ``('data', 'fsdp', 'tensor')``. Parameters carry logical axis
names (``embed``, ``mlp``, ``heads``, ...); a config's rules table maps each name to a mesh axis
(or to nothing: replicated). The batch dimension is split over ``('data', 'fsdp')``; each process
loads only its own rows and ``global_batch`` assembles the global ``jax.Array`` with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replace one -1 in ``shape`` so the product equals ``num_devices``.

    >>> resolve_mesh_shape((-1, 4, 2), 8)
    (1, 4, 2)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"Mesh shape {shape} must have one entry per axis {MESH_AXES}.")
    fills = [i for i, s in enumerate(shape) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"Mesh shape {shape} may contain at most one -1.")
    known = math.prod(s for s in shape if s != -1)
    if any(s == 0 or s < -1 for s in shape) or num_devices % known:
        raise ValueError(f"Mesh shape {shape} does not divide the {num_devices} devices.")
    if fills:
        shape = shape[:fills[0]] + (num_devices // known,) + shape[fills[0] + 1:]
    if math.prod(shape) != num_devices:
        raise ValueError(f"Mesh shape {shape} uses {math.prod(shape)} devices but "
                         f"{num_devices} are available; use -1 on one axis to fill.")
    return shape


def create_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None,
                num_devices: int = 0) -> Mesh:
    """A mesh over ``devices`` (default: all, or the first ``num_devices``) with axes
    ``MESH_AXES``; -1 fills one axis."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist.")
        devices = devices[:num_devices]
    shape = resolve_mesh_shape(shape, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of an array whose leading (batch) dimension is split over ``BATCH_AXES``."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def constrain_batch(x: jax.Array) -> jax.Array:
    """An activation sharding constraint: ``x``'s leading (batch) dimension split over
    ``BATCH_AXES``, its other dimensions left to the partitioner. Applies inside a traced step
    that set a mesh (``Trainer`` traces its step under ``use_abstract_mesh``); otherwise, or
    when the batch does not divide, ``x`` is returned as it is. Without it, convolutions of a
    model whose weights are FSDP-sharded may be partitioned by gathering activations instead
    of weights (stage 1 at paper size: 68 GiB of temporaries per v5e chip at 1 example/chip)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if shards == 1 or x.shape[0] % shards:
        return x
    return jax.lax.with_sharding_constraint(
        x, P(BATCH_AXES, *([P.UNCONSTRAINED] * (x.ndim - 1))))


def batch_size_per_process(global_batch_size: int) -> int:
    """Rows each process loads; the global batch must divide evenly over processes."""
    n = jax.process_count()
    if global_batch_size % n:
        raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                         f"{n} processes.")
    return global_batch_size // n


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble a pytree of host-local arrays (this process's rows) into global ``jax.Array``s.

    Every leaf's leading dimension is this process's share of the batch; the global leading
    dimension is that times the process count, sharded over ``BATCH_AXES``.
    """
    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(one, local_batch)


# A rules table: (logical axis name, mesh axis | tuple of mesh axes | None).
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("modulation", "tensor"),
    ("kv", None),
    ("motion", None),
    ("audio", None),
    ("cond", None),
    ("vocab", None),
)


def logical_to_mesh(names: Sequence[str | None] | None, rules: Rules) -> P:
    """PartitionSpec for logical axis ``names``; names without a rule are replicated."""
    table = dict(rules)
    if not names:
        return P()
    used: set[str] = set()
    out = []
    for n in names:
        axis = table.get(n) if n is not None else None
        axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
        if used & set(axes):  # a mesh axis may shard only one dimension
            axes = ()
        used |= set(axes)
        out.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*out)


def path_name(path: Sequence[Any]) -> str:
    """``params/model/blocks/0/kernel`` for a pytree key path (dict keys, sequence indices and
    attribute names; an nnx Variable's own ``.value`` step left out)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in path
                    if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value"))


def _spec_for(var: nnx.Variable, shape: Sequence[int], mesh: Mesh, rules: Rules
              ) -> tuple[P, bool]:
    """(spec, whether a rule was dropped): a dimension the rule's mesh axes do not divide
    (e.g. a 64-wide bias on a 256-way FSDP mesh) is replicated instead."""
    spec = logical_to_mesh(var.get_metadata().get("out_sharding"), rules)
    out, dropped = [], False
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is not None:
            size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            if dim % size:
                axes, dropped = None, True
        out.append(axes)
    return P(*out), dropped


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules,
                    replicated_instead: list | None = None) -> Any:
    """NamedShardings for every variable of an (abstract) ``nnx.State``, same structure.

    A dimension whose rule's mesh axes do not divide it is replicated; those variables are
    logged once (how many, how many bytes, the largest) and appended to ``replicated_instead``
    as (path, shape, bytes) when it is given: a big one there costs memory on every chip."""
    fallbacks = []

    def one(path, var):
        if not isinstance(var, nnx.Variable):
            return NamedSharding(mesh, P())
        spec, dropped = _spec_for(var, var.shape, mesh, rules)
        if dropped:
            fallbacks.append((path_name(path), tuple(var.shape),
                              int(math.prod(var.shape) * np.dtype(var.dtype).itemsize)))
        return var.replace(NamedSharding(mesh, spec))

    out = jax.tree_util.tree_map_with_path(
        one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    if fallbacks:
        fallbacks.sort(key=lambda f: -f[2])
        logging.info("%d state arrays (%.1f MB) keep a replicated dimension on mesh %s because "
                     "its size does not divide over the rule's mesh axes; largest: %s",
                     len(fallbacks), sum(f[2] for f in fallbacks) / 1e6, dict(mesh.shape),
                     ", ".join(f"{n} {s}" for n, s, _ in fallbacks[:3]))
        if replicated_instead is not None:
            replicated_instead.extend(fallbacks)
    return out


def spec_table(shardings: Any) -> dict[str, str]:
    """{"path/to/param": "PartitionSpec(...)"} for a tree of NamedShardings (stable strings)."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {path_name(path): str(s.spec) for path, s in flat}


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    """Batch-axis shardings for a dict of arrays (host or abstract)."""
    return {k: batch_sharding(mesh, np.ndim(v) if not hasattr(v, "ndim") else v.ndim)
            for k, v in batch.items()}
