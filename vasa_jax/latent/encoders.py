"""Stage-1 encoders: appearance (posed 3-D volume + identity code) and motion (pose + dynamics).

Images are (b, R, R, 3) in [-1, 1].
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vasa_jax.latent.warp import POSE_DIM
from vasa_jax.nn.conv import (ResBlock, WSConv, downsample, group_norm, num_groups,
                              space_to_depth)
from vasa_jax.nn.layers import dense


class AppearanceEncoder(nnx.Module):
    """Image -> posed appearance volume ``(b, D, R / 2^n, R / 2^n, C)`` and identity ``z_id``.

    The image is folded ``patch`` x ``patch`` into channels (space-to-depth; 1 = off), then a
    2-D residual trunk with ``n = len(channels) - 1`` downsamplings, a 1x1 convolution to
    ``C * D`` channels unfolded into a volume (MegaPortraits: 96 x 16 at 1/8 of 512 px), then
    3-D residual blocks. ``z_id`` (b, id_dim) comes from the pooled trunk features."""

    def __init__(self, channels: Sequence[int], volume_channels: int, volume_depth: int,
                 blocks_3d: int, id_dim: int, *, rngs: nnx.Rngs, patch: int = 1,
                 dtype=jnp.float32):
        self.patch = patch
        self.stem = WSConv(3 * patch * patch, channels[0], 3, ndim=2, rngs=rngs, in_axis=None,
                           dtype=dtype)
        self.blocks = nnx.List([ResBlock(a, b, ndim=2, rngs=rngs, dtype=dtype)
                                for a, b in zip(channels[:-1], channels[1:])])
        self.last = ResBlock(channels[-1], channels[-1], ndim=2, rngs=rngs, dtype=dtype)
        self.groups = num_groups(channels[-1])
        self.to_volume = WSConv(channels[-1], volume_channels * volume_depth, 1, ndim=2,
                                rngs=rngs, dtype=dtype)
        self.blocks_3d = nnx.List([ResBlock(volume_channels, volume_channels, ndim=3, rngs=rngs,
                                            dtype=dtype) for _ in range(blocks_3d)])
        self.id_head = dense(channels[-1], id_dim, ("conv_in", "cond"), rngs=rngs, dtype=dtype)
        self.volume_channels, self.volume_depth = volume_channels, volume_depth
        # Channels of the first-level features ``encode`` returns (after the first block).
        self.skip_width = channels[1] if len(channels) > 1 else channels[0]

    def features(self, image: jax.Array) -> jax.Array:
        return self._trunk(image)[0]

    def _trunk(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> (the last features (b, R / p 2^n, ., channels[-1]), the first-level features
        (b, R / p, R / p, skip_width): after the stem and the first block, before any
        downsampling)."""
        x = self.stem(space_to_depth(image, self.patch))
        first = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 0:
                first = x
            x = downsample(x, (2, 2))
        return jax.nn.silu(group_norm(self.last(x), self.groups)), first

    def identity(self, image: jax.Array) -> jax.Array:
        """(b, R, R, 3) -> z_id (b, id_dim) (the default identity embedder of l_cross_id)."""
        return self.id_head(self.features(image).mean(axis=(1, 2))).astype(jnp.float32)

    def __call__(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        v, z_id, _ = self.encode(image)
        return v, z_id

    def encode(self, image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """-> posed volume (b, D, h, w, C), z_id (b, id_dim), and the first-level 2-D features
        (b, R / p, R / p, skip_width) for a sharp skip path."""
        f, first = self._trunk(image)
        b, h, w, _ = f.shape
        v = self.to_volume(f).reshape(b, h, w, self.volume_depth, self.volume_channels)
        v = v.transpose(0, 3, 1, 2, 4)
        for block in self.blocks_3d:
            v = block(v)
        z_id = self.id_head(f.mean(axis=(1, 2))).astype(jnp.float32)
        return v, z_id, first


class MotionEncoder(nnx.Module):
    """Image -> head pose ``z_pose`` (b, 7) and facial dynamics ``z_dyn`` (b, dyn_dim).

    Space-to-depth by ``patch``, a 2-D residual trunk that halves the resolution after every
    stage, global average pooling and an MLP. The pose head starts at zero (the identity
    pose)."""

    def __init__(self, channels: Sequence[int], hidden: int, dyn_dim: int, *, rngs: nnx.Rngs,
                 patch: int = 1, dtype=jnp.float32):
        self.patch = patch
        self.stem = WSConv(3 * patch * patch, channels[0], 3, ndim=2, rngs=rngs, in_axis=None,
                           dtype=dtype)
        self.blocks = nnx.List([ResBlock(a, b, ndim=2, rngs=rngs, dtype=dtype)
                                for a, b in zip((channels[0],) + tuple(channels[:-1]), channels)])
        self.groups = num_groups(channels[-1])
        self.fc = dense(channels[-1], hidden, ("conv_in", "mlp"), rngs=rngs, dtype=dtype)
        self.pose = dense(hidden, POSE_DIM, ("mlp", None), rngs=rngs, dtype=dtype, zero_init=True)
        self.dyn = dense(hidden, dyn_dim, ("mlp", "cond"), rngs=rngs, dtype=dtype)

    def __call__(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.stem(space_to_depth(image, self.patch))
        for block in self.blocks:
            x = downsample(block(x), (2, 2))
        h = jax.nn.silu(group_norm(x, self.groups)).mean(axis=(1, 2))
        h = jax.nn.silu(self.fc(h))
        return self.pose(h).astype(jnp.float32), self.dyn(h).astype(jnp.float32)
