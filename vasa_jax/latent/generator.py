"""Stage-1 decoder after warping: G3D (3-D U-Net), orthographic projection, G2D -> RGB."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vasa_jax.nn.conv import (ResBlock, WSConv, depth_to_space, downsample, group_norm,
                              num_groups, upsample)


class G3D(nnx.Module):
    """3-D U-Net over a driven volume (b, d, h, w, C) -> (b, d, h, w, channels[0]).

    Level i has ``channels[i]`` channels; between levels h and w are halved (depth kept, as it
    is small) and restored on the way up, with skip connections by concatenation.

    ``cond_dim`` > 0 makes every block's GroupNorm adaptive to a code ``cond`` (b, cond_dim)
    (the driving dynamics ``z_dyn``): a direct path from the expression code to the decoder,
    beside the warp. MegaPortraits' G3D is unconditioned (``cond_dim`` = 0); the adaptive norms
    start as plain GroupNorm, so the two begin identical. An unconditioned G3D ignores ``cond``."""

    def __init__(self, in_ch: int, channels: Sequence[int], *, rngs: nnx.Rngs,
                 cond_dim: int = 0, dtype=jnp.float32):
        ins = (in_ch,) + tuple(channels[:-1])
        self.down = nnx.List([ResBlock(a, b, ndim=3, rngs=rngs, cond_dim=cond_dim, dtype=dtype)
                              for a, b in zip(ins, channels)])
        self.up = nnx.List([ResBlock(channels[i + 1] + channels[i], channels[i], ndim=3,
                                     rngs=rngs, cond_dim=cond_dim, dtype=dtype)
                            for i in reversed(range(len(channels) - 1))])

    def __call__(self, v: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        skips = []
        for i, block in enumerate(self.down):
            v = block(v, cond)
            if i < len(self.down) - 1:
                skips.append(v)
                v = downsample(v, (1, 2, 2))
        for block in self.up:
            v = block(jnp.concatenate([upsample(v, (1, 2, 2)), skips.pop()], axis=-1), cond)
        return v


class Projection(nnx.Module):
    """Orthographic projection: fold depth into channels, then a 1x1 convolution.
    (b, d, h, w, c) -> (b, h, w, out_ch)."""

    def __init__(self, depth: int, in_ch: int, out_ch: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        self.conv = WSConv(depth * in_ch, out_ch, 1, ndim=2, rngs=rngs, dtype=dtype)

    def __call__(self, v: jax.Array) -> jax.Array:
        b, d, h, w, c = v.shape
        return self.conv(v.transpose(0, 2, 3, 1, 4).reshape(b, h, w, d * c))


class G2D(nnx.Module):
    """2-D generator: residual blocks with 2x upsampling between them, then RGB in [-1, 1],
    predicted ``patch`` x ``patch`` pixels per position (depth-to-space; 1 = off).
    (b, h, w, in_ch) -> (b, h p 2^(n-1), w p 2^(n-1), 3) with n = len(channels).

    ``skip_channels`` > 0: the last block also takes ``skip`` (b, h 2^(n-1), w 2^(n-1),
    skip_channels), concatenated to its input (the warped source features of the sharp path).
    ``cond_dim`` > 0: adaptive GroupNorm on a code ``cond`` (b, cond_dim) in every block (the
    driving z_dyn: a local feature that marks the mouth times a global jaw gain draws an opening
    at full resolution); starts as plain GroupNorm. Unconditioned blocks ignore ``cond``.
    ``occlusion``: also predict a per-pixel mask m and return m * ``pixels`` + (1 - m) * RGB,
    ``pixels`` (b, R, R, 3) being the source image warped to the driver (the pixel path; FOMM's
    occlusion-aware output): what the warp carries stays sharp, G2D paints what it cannot
    (the inside of an opening mouth). m starts near ``MASK_INIT`` everywhere."""

    MASK_INIT = 0.88  # sigmoid(2): an untrained decoder shows mostly the warped source

    def __init__(self, in_ch: int, channels: Sequence[int], *, rngs: nnx.Rngs, patch: int = 1,
                 skip_channels: int = 0, cond_dim: int = 0, occlusion: bool = False,
                 dtype=jnp.float32):
        self.patch = patch
        ins = (in_ch,) + tuple(channels[:-1])
        ins = ins[:-1] + (ins[-1] + skip_channels,)
        self.blocks = nnx.List([ResBlock(a, b, ndim=2, rngs=rngs, cond_dim=cond_dim, dtype=dtype)
                                for a, b in zip(ins, channels)])
        self.groups = num_groups(channels[-1])
        self.to_rgb = WSConv(channels[-1], 3 * patch * patch, 3, ndim=2, rngs=rngs,
                             out_axis=None, dtype=dtype)
        self.to_mask = (WSConv(channels[-1], patch * patch, 3, ndim=2, rngs=rngs,
                               standardize=False, zero_init=True, out_axis=None, dtype=dtype)
                        if occlusion else None)

    def parts(self, x: jax.Array, skip: jax.Array | None = None,
              cond: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        """G2D's own colour (b, R, R, 3) in [-1, 1] and, with ``occlusion``, the mask m
        (b, R, R, 1) in (0, 1) (else None), before any blending."""
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = upsample(x, (2, 2))
            if skip is not None and i == len(self.blocks) - 1:
                x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
            x = block(x, cond)
        x = jax.nn.silu(group_norm(x, self.groups))
        rgb = jnp.tanh(depth_to_space(self.to_rgb(x), self.patch).astype(jnp.float32))
        if self.to_mask is None:
            return rgb, None
        logit = depth_to_space(self.to_mask(x), self.patch).astype(jnp.float32)
        return rgb, jax.nn.sigmoid(logit + math.log(self.MASK_INIT / (1.0 - self.MASK_INIT)))

    def __call__(self, x: jax.Array, skip: jax.Array | None = None,
                 cond: jax.Array | None = None, pixels: jax.Array | None = None) -> jax.Array:
        rgb, m = self.parts(x, skip, cond)
        return rgb if m is None else blend(m, pixels, rgb)


def blend(mask: jax.Array, pixels: jax.Array, rgb: jax.Array) -> jax.Array:
    """The occlusion-aware output: mask * pixels + (1 - mask) * rgb (float32)."""
    return mask * pixels.astype(jnp.float32) + (1.0 - mask) * rgb
