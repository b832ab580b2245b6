"""Multi-head self-attention and a condition-modulated transformer block (adaLN-single)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vasa_jax.nn.layers import Mlp, layer_norm


class SelfAttention(nnx.Module):
    """Bidirectional multi-head self-attention with an optional key mask.

    Kernels are (embed, heads, kv) for q/k/v and (heads, kv, embed) for the output, so tensor
    parallelism splits heads.
    """

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}.")
        self.heads, self.head_dim, self.dtype = heads, width // heads, dtype
        init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        out_init = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        shape = (width, heads, self.head_dim)
        axes = ("embed", "heads", "kv")
        self.q = nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape))
        self.k = nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape))
        self.v = nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape))
        self.o = nnx.Param(nnx.with_partitioning(out_init, ("heads", "kv", "embed"))(
            rngs.params(), (heads, self.head_dim, width)))

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """x (B, N, d); key_mask (B, N) bool, False = token may not be attended to."""
        x = x.astype(self.dtype)
        q = jnp.einsum("bnd,dhk->bnhk", x, self.q[...].astype(self.dtype))
        k = jnp.einsum("bnd,dhk->bnhk", x, self.k[...].astype(self.dtype))
        v = jnp.einsum("bnd,dhk->bnhk", x, self.v[...].astype(self.dtype))
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) / jnp.sqrt(
            jnp.float32(self.head_dim))
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqs,bshk->bqhk", w, v)
        return jnp.einsum("bqhk,hkd->bqd", out, self.o[...].astype(self.dtype))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x (B, N, d) * (1 + scale) + shift, with shift/scale (B, d)."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class AdaLNBlock(nnx.Module):
    """Pre-norm transformer encoder block modulated by a condition (adaLN-single, PixArt-alpha).

    The model computes ONE modulation ``mod`` (B, 6, d) from the condition for all blocks; each
    block adds its own learned table (6, d) and splits the sum into shift/scale/gate for attention
    and MLP. Tables and the shared projection start at zero, so every block starts as the
    identity (as adaLN-Zero does).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, *, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        self.norm1 = layer_norm(width, rngs=rngs, affine=False, dtype=dtype)
        self.attn = SelfAttention(width, heads, rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(width, rngs=rngs, affine=False, dtype=dtype)
        self.mlp = Mlp(width, int(width * mlp_ratio), rngs=rngs, dtype=dtype)
        self.table = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(),
                                                     (None, "embed"))(rngs.params(), (6, width)))
        self.remat = False  # ``vasa_jax.nn.remat.enable_remat``

    def __call__(self, x: jax.Array, mod: jax.Array, key_mask: jax.Array | None = None
                 ) -> jax.Array:
        """x (B, N, d), mod (B, 6, d) -> (B, N, d)."""
        if self.remat:
            return nnx.remat(AdaLNBlock._forward)(self, x, mod, key_mask)
        return self._forward(x, mod, key_mask)

    def _forward(self, x, mod, key_mask):
        m = mod + self.table[...].astype(mod.dtype)
        s1, sc1, g1, s2, sc2, g2 = (m[:, i] for i in range(6))
        x = x + g1[:, None, :] * self.attn(modulate(self.norm1(x), s1, sc1), key_mask)
        x = x + g2[:, None, :] * self.mlp(modulate(self.norm2(x), s2, sc2))
        return x
