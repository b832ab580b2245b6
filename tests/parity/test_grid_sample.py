"""grid_sample2d / grid_sample3d against torch.nn.functional.grid_sample (mode='bilinear'):
values and gradients for both padding modes and both align_corners, identity grids, bfloat16
volumes, jit + vmap, and input checks. Torch runs in float64 on the float32 JAX inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vasa_jax.nn.grid_sample import grid_sample2d, grid_sample3d

SAMPLE = {2: grid_sample2d, 3: grid_sample3d}
SPATIAL = {2: (5, 6), 3: (4, 5, 6)}  # (h, w) / (d, h, w)
OUT = {2: (4, 5), 3: (3, 4, 5)}
B, C = 2, 3
ATOL = 1e-5
COMBOS = pytest.mark.parametrize("padding_mode,align_corners", [
    ("zeros", False), ("zeros", True), ("border", False), ("border", True)])
DIMS = pytest.mark.parametrize("n", [2, 3])


def _inputs(n, seed=0):
    """A float32 input (b, *spatial, c) and grid (b, *out, n) uniform in [-1.3, 1.3] (so partly
    outside), with some points exactly on the border (all -1, all +1, x = +1, last coord = -1)
    and two far outside (x = 3, last coord = -2.5)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, *SPATIAL[n], C)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, size=(B, *OUT[n], n)).astype(np.float32)
    flat = grid.reshape(B, -1, n)
    flat[:, 0] = -1.0
    flat[:, 1] = 1.0
    flat[:, 2, 0] = 1.0
    flat[:, 3, -1] = -1.0
    flat[:, 4, 0] = 3.0
    flat[:, 5, -1] = -2.5
    return x, flat.reshape(grid.shape)


def _off_lattice(grid, n, align_corners):
    """Moves grid points whose voxel coordinate is within 1e-3 of an integer by 0.01 (in grid
    units; >= 0.015 voxels here): the trilinear weights, and border padding's clamp, have kinks
    there, so the grid gradient jumps, and the float32 (JAX) and float64 (torch) coordinates of
    a point that close could fall on different sides of the kink."""
    grid = grid.astype(np.float64)
    for k in range(n):
        size = SPATIAL[n][n - 1 - k]  # component k (x, y, z) indexes spatial axis n-1-k
        g = grid[..., k]
        coord = (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2
        near = np.abs(coord - np.round(coord)) < 1e-3
        grid[..., k] = np.where(near, g + 0.01, g)
        coord = (grid[..., k] + 1) / 2 * (size - 1) if align_corners else (
            (grid[..., k] + 1) * size - 1) / 2
        assert np.all(np.abs(coord - np.round(coord)) > 1e-3)
    return grid.astype(np.float32)


def _to_torch(x, grid, n):
    """Channels-last numpy -> torch float64 channels-first input and grid (grads enabled)."""
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)).requires_grad_(True)
    gt = torch.from_numpy(grid.astype(np.float64)).requires_grad_(True)
    return xt, gt


def _torch_sample(xt, gt, padding_mode, align_corners):
    out = F.grid_sample(xt, gt, mode="bilinear", padding_mode=padding_mode,
                        align_corners=align_corners)
    return out.movedim(1, -1)  # back to channels-last


def _grads(n, x, grid, cot, padding_mode, align_corners):
    """(dx, dgrid) from jax.vjp and from torch autograd for the cotangent ``cot``."""
    f = functools.partial(SAMPLE[n], padding_mode=padding_mode, align_corners=align_corners)
    _, pullback = jax.vjp(f, jnp.asarray(x), jnp.asarray(grid))
    dx, dg = pullback(jnp.asarray(cot))
    xt, gt = _to_torch(x, grid, n)
    _torch_sample(xt, gt, padding_mode, align_corners).backward(torch.from_numpy(
        cot.astype(np.float64)))
    return (np.asarray(dx), np.asarray(dg)), (np.moveaxis(xt.grad.numpy(), 1, -1),
                                              gt.grad.numpy())


@DIMS
@COMBOS
def test_matches_torch(n, padding_mode, align_corners):
    x, grid = _inputs(n)
    out = SAMPLE[n](jnp.asarray(x), jnp.asarray(grid), padding_mode=padding_mode,
                    align_corners=align_corners)
    assert out.shape == (B, *OUT[n], C) and out.dtype == jnp.float32
    ref = _torch_sample(*_to_torch(x, grid, n), padding_mode, align_corners).detach().numpy()
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=ATOL)
    if padding_mode == "zeros":  # the points far outside sample nothing but zeros
        assert np.all(np.asarray(out).reshape(B, -1, C)[:, 4:6] == 0)


@DIMS
@COMBOS
def test_gradients_match_torch(n, padding_mode, align_corners):
    x, grid = _inputs(n, seed=1)
    cot = np.random.default_rng(2).normal(size=(B, *OUT[n], C)).astype(np.float32)
    # Input gradient: on the grid with points exactly on the border (the weights are continuous).
    (dx, _), (dx_ref, _) = _grads(n, x, grid, cot, padding_mode, align_corners)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=ATOL)
    # Grid gradient: away from lattice points, where it is one-sided (see _off_lattice).
    grid = _off_lattice(grid, n, align_corners)
    (_, dg), (_, dg_ref) = _grads(n, x, grid, cot, padding_mode, align_corners)
    assert np.abs(dg_ref).max() > 0.1
    np.testing.assert_allclose(dg, dg_ref, rtol=0, atol=ATOL)
    if padding_mode == "border":  # clamped coordinates pass no gradient, as in torch
        assert np.any(dg_ref == 0) and np.all(dg[dg_ref == 0] == 0)


@DIMS
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_grid_reproduces_input(n, align_corners):
    x, _ = _inputs(n)
    theta = torch.eye(n, n + 1, dtype=torch.float32).expand(B, n, n + 1)
    grid = F.affine_grid(theta, (B, C, *SPATIAL[n]), align_corners=align_corners).numpy()
    out = SAMPLE[n](jnp.asarray(x), jnp.asarray(grid), align_corners=align_corners)
    # Float32 rounding of the grid moves a coordinate by ~1e-6 voxel; values are O(1).
    np.testing.assert_allclose(np.asarray(out), x, rtol=0, atol=1e-6)


def test_bfloat16_volume_with_float32_grid():
    x, grid = _inputs(3)
    xb = jnp.asarray(x, jnp.bfloat16)
    out = grid_sample3d(xb, jnp.asarray(grid), padding_mode="border")
    assert out.dtype == jnp.bfloat16 and out.shape == (B, *OUT[3], C)
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    ref = grid_sample3d(xb.astype(jnp.float32), jnp.asarray(grid), padding_mode="border")
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), np.asarray(ref),
                               rtol=1e-2, atol=1e-2)  # the output's bfloat16 rounding
    dx, dg = jax.jit(jax.grad(lambda v, g: grid_sample3d(v, g).astype(jnp.float32).sum(),
                              argnums=(0, 1)))(xb, jnp.asarray(grid))
    assert dx.dtype == jnp.bfloat16 and dg.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(dg))) and bool(jnp.all(jnp.isfinite(dx.astype(jnp.float32))))


@DIMS
def test_jit_and_vmap(n):
    x, grid = _inputs(n)
    xs, grids = np.stack([x, -x]), np.stack([grid, grid[::-1]])  # an extra leading axis of 2
    f = functools.partial(SAMPLE[n], padding_mode="border", align_corners=True)
    out = jax.jit(jax.vmap(f))(jnp.asarray(xs), jnp.asarray(grids))
    for i in range(2):
        np.testing.assert_allclose(np.asarray(out[i]), np.asarray(f(xs[i], grids[i])),
                                   rtol=0, atol=1e-6)
    shared = jax.jit(jax.vmap(f, in_axes=(None, 0)))(jnp.asarray(x), jnp.asarray(grids))
    np.testing.assert_allclose(np.asarray(shared[1]), np.asarray(f(x, grids[1])), rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize("x_shape,grid_shape,kwargs,match", [
    ((2, 4, 5, 6), (2, 3, 4, 5, 3), {}, "rank 5"),
    ((2, 4, 5, 6, 3), (2, 3, 4, 5, 2), {}, "grid must have shape"),
    ((2, 4, 5, 6, 3), (2, 3, 4, 3), {}, "grid must have shape"),
    ((2, 4, 5, 6, 3), (1, 3, 4, 5, 3), {}, "batch sizes differ"),
    ((2, 4, 5, 6, 3), (2, 3, 4, 5, 3), {"padding_mode": "reflection"}, "unknown padding_mode"),
])
def test_bad_inputs_raise(x_shape, grid_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        grid_sample3d(jnp.zeros(x_shape), jnp.zeros(grid_shape), **kwargs)
    if len(x_shape) == 5 and len(grid_shape) == 5 and grid_shape[-1] == 3:  # same for 2-D
        with pytest.raises(ValueError, match=match.replace("rank 5", "rank 4")):
            grid_sample2d(jnp.zeros(x_shape[:1] + x_shape[2:]),
                          jnp.zeros(grid_shape[:1] + grid_shape[2:-1] + (2,)), **kwargs)
