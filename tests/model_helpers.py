"""Test helper: models whose parameters are all randomised."""

import jax
from flax import nnx


def perturbed(module, seed: int = 1, scale: float = 0.2):
    """``module`` with every parameter plus ``scale`` x N(0, 1) noise (zero-initialised gates
    and output layers make a fresh model ignore its inputs)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)
