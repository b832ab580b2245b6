"""Embeddings of scalars: diffusion timesteps and continuous conditions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sinusoidal(x: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Transformer-style sinusoidal features of ``x`` (B,) -> (B, dim) (dim even)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = x.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def fourier(x: jax.Array, num: int, max_freq: float = 16.0) -> jax.Array:
    """Fourier features of continuous values ``x`` (B, C) in roughly [-1, 1] -> (B, C * 2 num)."""
    freqs = jnp.pi * jnp.geomspace(1.0, max_freq, num).astype(jnp.float32)
    args = x.astype(jnp.float32)[..., None] * freqs
    feats = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return feats.reshape(*x.shape[:-1], -1)
