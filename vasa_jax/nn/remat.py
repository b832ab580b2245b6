"""Rematerialisation (gradient checkpointing) of a model's repeated blocks.

``enable_remat(model)`` makes every residual block (``ResBlock``: stage 1's encoders, G3D,
G2D) and transformer block (``AdaLNBlock``: MotionDiT) keep only its inputs for the backward
pass and recompute its activations there (``nnx.remat``, i.e. ``jax.checkpoint``): a train
step's temporaries fall to about one block's activations plus the block boundaries, for about
one more forward pass of compute. Set by ``model.remat = True`` in a stage's config; the
values (and so checkpoints) are the same with and without it.
"""

from __future__ import annotations

from flax import nnx

from vasa_jax.nn.attention import AdaLNBlock
from vasa_jax.nn.conv import ResBlock

BLOCKS = (ResBlock, AdaLNBlock)


def enable_remat(model: nnx.Module) -> int:
    """Turn on rematerialisation in every block of ``model``; returns how many blocks."""
    n = 0
    for _, module in nnx.iter_graph(model):
        if isinstance(module, BLOCKS):
            module.remat = True
            n += 1
    return n
