"""Bilinear / trilinear grid sampling (the warping op of the stage-1 face model).

``grid_sample3d`` and ``grid_sample2d`` compute what ``torch.nn.functional.grid_sample`` computes
with ``mode="bilinear"`` (trilinear on 5-D input), for ``padding_mode`` ``"zeros"`` or
``"border"`` and either ``align_corners``, values and gradients (w.r.t. both the input and the
grid), but in this project's channels-last layout:

* volumes ``(b, d, h, w, c)`` (torch: ``(b, c, d, h, w)``), images ``(b, h, w, c)``;
* grids ``(b, do, ho, wo, 3)`` / ``(b, ho, wo, 2)``, exactly as in torch: the last axis is
  ``(x, y[, z])`` in ``[-1, 1]`` with x indexing w, y indexing h and z indexing d, i.e. the
  coordinate order is the reverse of the array's spatial axes. ``-1``/``1`` are the centres of the
  corner voxels (``align_corners=True``) or their outer edges (``align_corners=False``);
* outputs ``(b, do, ho, wo, c)`` / ``(b, ho, wo, c)``.

Interpolation weights are computed in (at least) float32 whatever the input dtypes; the result
has the input's dtype (a bfloat16 volume sampled with a float32 grid gives bfloat16). The 2**n
corners are one gather from a ``(b, d*h*w, c)`` view with flat indices. ``"zeros"`` gives
out-of-range corners weight 0 (their indices are clipped only so that the gather stays in
range); ``"border"`` clamps the unnormalised coordinates to ``[0, size - 1]`` first, and, as in
torch, a clamped coordinate (including one exactly on the border) passes no gradient to the grid.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

PADDING_MODES = ("zeros", "border")


def grid_sample3d(volume, grid, *, padding_mode: str = "zeros", align_corners: bool = False
                  ) -> jax.Array:
    """Trilinear sampling of a channels-last volume, matching torch.nn.functional.grid_sample
    (mode='bilinear' on 5-D input) up to the layout.

    volume: Float[Array, "b d h w c"]; grid: Float[Array, "b do ho wo 3"] with the last axis
    (x, y, z) in [-1, 1], x indexing w, y indexing h, z indexing d (torch's convention).
    padding_mode: "zeros" | "border"; align_corners: bool (torch's meaning).
    Returns Float[Array, "b do ho wo c"]."""
    return _grid_sample(volume, grid, 3, padding_mode, align_corners, "grid_sample3d")


def grid_sample2d(image, grid, *, padding_mode: str = "zeros", align_corners: bool = False
                  ) -> jax.Array:
    """Same for images: image (b, h, w, c), grid (b, ho, wo, 2) with (x, y). Returns
    (b, ho, wo, c)."""
    return _grid_sample(image, grid, 2, padding_mode, align_corners, "grid_sample2d")


def _check(x, grid, n: int, padding_mode: str, name: str) -> None:
    layout = "(b, d, h, w, c)" if n == 3 else "(b, h, w, c)"
    grid_layout = "(b, do, ho, wo, 3)" if n == 3 else "(b, ho, wo, 2)"
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{name}: unknown padding_mode {padding_mode!r}; "
                         f"use one of {PADDING_MODES}.")
    if x.ndim != n + 2:
        raise ValueError(f"{name}: input must have rank {n + 2} {layout}, got shape {x.shape}.")
    if grid.ndim != n + 2 or grid.shape[-1] != n:
        raise ValueError(f"{name}: grid must have shape {grid_layout}, got {grid.shape}.")
    if grid.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: batch sizes differ: input {x.shape} vs grid {grid.shape}.")
    if 0 in x.shape[1:-1]:
        raise ValueError(f"{name}: input has an empty spatial axis: {x.shape}.")


def _unnormalise(g: jax.Array, size: int, align_corners: bool) -> jax.Array:
    """[-1, 1] -> voxel coordinates along an axis of ``size`` voxels (torch's formulas)."""
    if align_corners:
        return (g + 1) / 2 * (size - 1)
    return ((g + 1) * size - 1) / 2


def _clamp(coord: jax.Array, size: int) -> jax.Array:
    """Clamp to [0, size - 1] with torch's gradient: 0 when on or beyond either bound (a plain
    ``jnp.clip`` would pass half the gradient at a tie)."""
    hi = size - 1
    return jnp.where(coord <= 0, 0.0, jnp.where(coord >= hi, float(hi), coord))


def _grid_sample(x, grid, n: int, padding_mode: str, align_corners: bool, name: str) -> jax.Array:
    x = jnp.asarray(x)
    grid = jnp.asarray(grid)
    _check(x, grid, n, padding_mode, name)
    b, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    out_spatial = grid.shape[1:-1]
    compute = jnp.promote_types(jnp.promote_types(x.dtype, grid.dtype), jnp.float32)

    g = grid.astype(compute).reshape(b, -1, n)  # (b, m, n)
    flat = x.reshape(b, -1, c)  # (b, d*h*w, c)
    strides = [math.prod(spatial[axis + 1:]) for axis in range(n)]

    # Per spatial axis (array order d, h, w = grid components z, y, x): lower corner and fraction.
    lower, frac = [], []
    for axis, size in enumerate(spatial):
        coord = _unnormalise(g[..., n - 1 - axis], size, align_corners)
        if padding_mode == "border":
            coord = _clamp(coord, size)
        i0 = jnp.floor(coord)
        lower.append(i0)
        frac.append(coord - i0)

    weights, indices = [], []
    for corner in itertools.product((0, 1), repeat=n):
        weight, valid, index = None, None, None
        for axis, (size, offset) in enumerate(zip(spatial, corner)):
            i = lower[axis] + offset
            w = frac[axis] if offset else 1 - frac[axis]
            weight = w if weight is None else weight * w
            # Clip in float before the cast: far-out coordinates must not overflow int32.
            idx = jnp.clip(i, 0, size - 1).astype(jnp.int32) * strides[axis]
            index = idx if index is None else index + idx
            if padding_mode == "zeros":
                inside = (i >= 0) & (i <= size - 1)
                valid = inside if valid is None else valid & inside
        if valid is not None:
            weight = jnp.where(valid, weight, 0)
        weights.append(weight)
        indices.append(index)
    # One gather of all 2**n corners (so the backward pass is one scatter-add, not 2**n).
    m, k = g.shape[1], len(indices)
    index = jnp.stack(indices, -1).reshape(b, m * k, 1)
    values = jnp.take_along_axis(flat, index, axis=1).reshape(b, m, k, c)  # (b, m, 2^n, c)
    out = jnp.einsum("bmkc,bmk->bmc", values.astype(compute), jnp.stack(weights, -1))
    return out.astype(x.dtype).reshape(b, *out_spatial, c)
