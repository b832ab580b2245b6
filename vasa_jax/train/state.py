"""Train state, optimisers and the EMA of the parameters.

Parameters are kept in named groups (stage 2: ``model``; stage 1: ``generator`` and
``discriminator``), each with its own optax optimiser; the EMA covers the groups a task asks for.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes. All leaves are arrays (checkpointable, shardable).

    step: int32 scalar, steps applied or skipped so far.
    params: {group: nnx.State} trainable parameters.
    rest: nnx.State of non-trainable variables (normalisation statistics, ...).
    opt_state: {group: optax state}.
    ema: {group: nnx.State} exponential moving average of ``params`` (sampling weights).
    nonfinite: int32 scalar, number of steps skipped because loss or gradients were not finite.
    """

    step: jax.Array
    params: dict[str, Any]
    rest: Any
    opt_state: dict[str, Any]
    ema: dict[str, Any]
    nonfinite: jax.Array


def lr_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine to
    ``cfg.lr * cfg.end_lr_factor`` at ``cfg.decay_steps`` or, when that is 0 (the configs'
    default), at ``total_steps``: the run's ``train.steps``, read here rather than copied into
    the config so that overriding ``train.steps`` moves the end of the decay with it."""
    decay = int(cfg.decay_steps or total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=max(int(cfg.warmup_steps), 1),
        decay_steps=max(decay, int(cfg.warmup_steps) + 1), end_value=cfg.lr * cfg.end_lr_factor)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW (weight decay on matrices only) with
    ``lr_schedule(cfg, total_steps)``."""
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay, mask=decay_mask))


def update_groups(optimizers: dict[str, optax.GradientTransformation], grads: dict[str, Any],
                  opt_state: dict[str, Any], params: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One optimiser step per parameter group (each group has its own optimiser and state):
    -> (new params, new optimiser states), both keyed by group like ``optimizers``."""
    new_params, new_opt = {}, {}
    for g, tx in optimizers.items():
        updates, new_opt[g] = tx.update(grads[g], opt_state[g], params[g])
        new_params[g] = optax.apply_updates(params[g], updates)
    return new_params, new_opt


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
    """EMA with the usual warm-up: the effective decay is min(decay, (1 + s) / (10 + s))."""
    s = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + s) / (10.0 + s))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


def all_finite(*trees: Any) -> jax.Array:
    leaves = [x for t in trees for x in jax.tree.leaves(t)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
