"""Device mesh and global batches.

The mesh always has the axes ``('data', 'fsdp', 'tensor')``. The batch dimension is split over
``('data', 'fsdp')``; each process loads only its own rows and ``global_batch`` assembles the
global ``jax.Array`` with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
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


def create_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all) with axes ``MESH_AXES``; -1 fills one axis."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of an array whose leading (batch) dimension is split over ``BATCH_AXES``."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


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
