"""Multi-scale PatchGAN discriminator (pix2pixHD / MegaPortraits style)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vasa_jax.nn.conv import downsample


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, *, rngs, dtype,
          in_axis: str | None = "conv_in", out_axis: str | None = "conv_out") -> nnx.Conv:
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding="SAME", dtype=dtype,
                    kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                      (None, None, in_axis, out_axis)),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (out_axis,)),
                    rngs=rngs)


class PatchDiscriminator(nnx.Module):
    """4x4 stride-2 convolutions with leaky ReLU, then a 1-channel map of patch logits.
    (b, h, w, 3) -> (features [(b, h/2^i, w/2^i, c_i)], logits (b, h', w', 1))."""

    def __init__(self, channels: Sequence[int], *, rngs: nnx.Rngs, dtype=jnp.float32):
        ins = (3,) + tuple(channels[:-1])
        self.convs = nnx.List([_conv(a, b, 4, 2, rngs=rngs, dtype=dtype,
                                     in_axis=None if a == 3 else "conv_in")
                               for a, b in zip(ins, channels)])
        self.out = _conv(channels[-1], 1, 3, 1, rngs=rngs, dtype=dtype, out_axis=None)

    def __call__(self, x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        feats = []
        for conv in self.convs:
            x = jax.nn.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return feats, self.out(x).astype(jnp.float32)


class MultiScaleDiscriminator(nnx.Module):
    """One ``PatchDiscriminator`` per scale; scale i sees the image average-pooled by 2^i."""

    def __init__(self, channels: Sequence[int], num_scales: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        self.scales = nnx.List([PatchDiscriminator(channels, rngs=rngs, dtype=dtype)
                                for _ in range(num_scales)])

    def __call__(self, image: jax.Array) -> list[tuple[list[jax.Array], jax.Array]]:
        out = []
        for i, d in enumerate(self.scales):
            out.append(d(image if i == 0 else downsample(image, (2 ** i, 2 ** i))))
        return out
