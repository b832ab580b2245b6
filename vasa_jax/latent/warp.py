"""Rigid and non-rigid 3-D warping of appearance volumes.

Coordinates are normalised to [-1, 1] per axis with ``align_corners=True`` semantics (the first
and last voxel centres sit at -1 and 1); the last axis of a grid is (x, y, z) = (w, h, d), the
convention of ``grid_sample3d``.

Head pose ``z_pose`` (b, 7) = (yaw, pitch, roll, tx, ty, tz, log_scale): rotation angles in
radians (R = Rz(roll) Ry(yaw) Rx(pitch)), translation in normalised units, scale = exp(log_scale).
The identity pose is all zeros.

Warps (MegaPortraits' w_{s->} and w_{->d}, each rigid + non-rigid):
- source -> canonical: V_can(g) = V_src(s_s R_s (g + F_s(g)) + t_s)
- canonical -> driver: V_drv(p) = V_can(R_d^T (p - t_d) / s_d + F_d(p))
where F are 3-D flow fields from a ``WarpGenerator``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vasa_jax.nn.conv import ResBlock, WSConv, group_norm, num_groups, upsample
from vasa_jax.nn.grid_sample import grid_sample2d, grid_sample3d
from vasa_jax.nn.layers import dense

POSE_DIM = 7
POSE_FIELDS = ("yaw", "pitch", "roll", "tx", "ty", "tz", "log_scale")


def identity_grid(depth: int, height: int, width: int) -> jax.Array:
    """(d, h, w, 3) voxel centres in normalised (x, y, z) coordinates."""
    z, y, x = (jnp.linspace(-1.0, 1.0, n) for n in (depth, height, width))
    zz, yy, xx = jnp.meshgrid(z, y, x, indexing="ij")
    return jnp.stack([xx, yy, zz], axis=-1)


def rotation_matrix(yaw: jax.Array, pitch: jax.Array, roll: jax.Array) -> jax.Array:
    """(..., 3, 3) rotation Rz(roll) @ Ry(yaw) @ Rx(pitch) acting on (x, y, z) column vectors."""
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (jnp.cos, jnp.sin))
    one, zero = jnp.ones_like(yaw), jnp.zeros_like(yaw)
    rx = jnp.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*yaw.shape, 3, 3)
    ry = jnp.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*yaw.shape, 3, 3)
    rz = jnp.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*yaw.shape, 3, 3)
    return rz @ ry @ rx


def _pose_parts(pose: jax.Array):
    pose = pose.astype(jnp.float32)
    rot = rotation_matrix(pose[:, 0], pose[:, 1], pose[:, 2])
    return rot, pose[:, 3:6], jnp.exp(pose[:, 6])


def posed_to_canonical_coords(grid: jax.Array, pose: jax.Array, flow: jax.Array | None = None
                              ) -> jax.Array:
    """Where each canonical point ``grid`` (d, h, w, 3) lies in a posed volume:
    ``s R (g + F) + t``. pose (b, 7), flow (b, d, h, w, 3) or None -> (b, d, h, w, 3)."""
    rot, t, s = _pose_parts(pose)
    g = grid[None] if flow is None else grid[None] + flow.astype(jnp.float32)
    g = jnp.einsum("bij,bdhwj->bdhwi", rot, g)
    return s[:, None, None, None, None] * g + t[:, None, None, None, :]


def canonical_coords_of_posed(grid: jax.Array, pose: jax.Array, flow: jax.Array | None = None
                              ) -> jax.Array:
    """Where each posed point ``grid`` (d, h, w, 3) comes from in the canonical volume:
    ``R^T (p - t) / s + F``. pose (b, 7), flow (b, d, h, w, 3) or None -> (b, d, h, w, 3)."""
    rot, t, s = _pose_parts(pose)
    p = (grid[None] - t[:, None, None, None, :]) / s[:, None, None, None, None]
    c = jnp.einsum("bji,bdhwj->bdhwi", rot, p)  # R^T p
    return c if flow is None else c + flow.astype(jnp.float32)


def resample(x: jax.Array, coords: jax.Array) -> jax.Array:
    """Sample a volume (b, d, h, w, c) at 3-D coords (b, d', h', w', 3), or an image
    (b, h, w, c) at 2-D coords (b, h', w', 2), in this module's convention (normalised, voxel
    centres at -1 and 1, zeros outside)."""
    sample = grid_sample3d if x.ndim == 5 else grid_sample2d
    return sample(x, coords, padding_mode="zeros", align_corners=True)


def warp_to_canonical(volume: jax.Array, pose: jax.Array, flow: jax.Array | None = None
                      ) -> jax.Array:
    """Posed volume (b, d, h, w, c) -> canonical volume of the same shape."""
    grid = identity_grid(*volume.shape[1:4])
    return resample(volume, posed_to_canonical_coords(grid, pose, flow))


def warp_from_canonical(volume: jax.Array, pose: jax.Array, flow: jax.Array | None = None
                        ) -> jax.Array:
    """Canonical volume (b, d, h, w, c) -> the volume posed by ``pose`` (+ ``flow``)."""
    grid = identity_grid(*volume.shape[1:4])
    return resample(volume, canonical_coords_of_posed(grid, pose, flow))


class WarpGenerator(nnx.Module):
    """Non-rigid 3-D flow from a code (MegaPortraits' warp generator): ``cond`` (b, k) ->
    a seed volume -> 3-D residual blocks with adaptive GroupNorm conditioned on ``cond``, each
    followed by a 2x upsampling -> a 3-channel flow (b, d, h, w, 3) in normalised units.

    With ``flow_upsample`` = 2 the flow is computed at half the volume's height and width and
    resized trilinearly (flows are smooth; 4x cheaper). The output convolution starts at zero,
    so an untrained generator gives the rigid warp."""

    def __init__(self, cond_dim: int, volume_shape: tuple[int, int, int], channels: int,
                 num_ups: int, *, rngs: nnx.Rngs, flow_upsample: int = 1, dtype=jnp.float32):
        self.volume_shape = tuple(volume_shape)
        d, h, w = volume_shape
        if h % flow_upsample or w % flow_upsample:
            raise ValueError(f"flow_upsample {flow_upsample} does not divide {volume_shape}.")
        h, w = h // flow_upsample, w // flow_upsample
        factors = []
        for _ in range(num_ups):
            fd = 2 if d % 2 == 0 and d // 2 >= 2 else 1
            if h % 2 or w % 2:
                raise ValueError(f"Volume {volume_shape} cannot be reached by {num_ups} "
                                 f"2x upsamplings.")
            d, h, w = d // fd, h // 2, w // 2
            factors.append((fd, 2, 2))
        self.factors = tuple(reversed(factors))  # a tuple keeps the graphdef hashable
        self.seed_shape = (d, h, w, channels)
        self.seed = dense(cond_dim, d * h * w * channels, ("cond", "conv_out"), rngs=rngs,
                          dtype=dtype)
        self.blocks = nnx.List([ResBlock(channels, channels, ndim=3, cond_dim=cond_dim,
                                         rngs=rngs, dtype=dtype) for _ in range(num_ups + 1)])
        self.out_groups = num_groups(channels)
        self.out = WSConv(channels, 3, 3, ndim=3, rngs=rngs, standardize=False, zero_init=True,
                          out_axis=None, dtype=dtype)

    def __call__(self, cond: jax.Array) -> jax.Array:
        x = self.seed(cond).reshape((cond.shape[0],) + self.seed_shape)
        for i, block in enumerate(self.blocks):
            x = block(x, cond)
            if i < len(self.factors):
                x = upsample(x, self.factors[i])
        x = jax.nn.silu(group_norm(x, self.out_groups))
        flow = self.out(x).astype(jnp.float32)
        if flow.shape[1:4] != self.volume_shape:
            flow = jax.image.resize(flow, (flow.shape[0],) + self.volume_shape + (3,), "trilinear")
        return flow
