"""The PyTorch twin of our optimiser (``vasa_jax.train.state.make_optimizer``).

Ours is ``optax.chain(clip_by_global_norm(clip_norm), adamw(lr_schedule, b1, b2, eps,
weight_decay, mask=ndim >= 2))``. Here:

- the schedule: ``warmup_cosine_lr`` is ``optax.warmup_cosine_decay_schedule`` with
  ``init_value=0``: linear 0 -> lr over ``warmup_steps``, then cosine to ``lr * end_lr_factor``
  at ``decay_steps`` (0: at the run's ``total_steps``, as ours); evaluated at the number of
  updates applied so far (optax's ``count``), so the first update uses lr(0) = 0 as ours does;
- clipping: ``clip_grad_global_norm_`` scales all gradients by ``clip_norm / norm`` when the
  global L2 norm is >= ``clip_norm`` (optax's rule; ``torch.nn.utils.clip_grad_norm_`` adds 1e-6
  to the norm and so differs slightly);
- AdamW: ``torch.optim.AdamW`` with two parameter groups (decayed / not). Both libraries apply
  ``p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)``: optax's ``scale_by_adam`` has
  ``eps_root = 0`` and adds ``eps`` outside the square root, like torch; torch applies the
  decay ``p *= 1 - lr * wd`` before the Adam step, which is the same update.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch


def warmup_cosine_lr(step: int, cfg: Any, total_steps: int) -> float:
    """The learning rate of update ``step`` (0-based) for an ``optim`` config (``lr``,
    ``warmup_steps``, ``decay_steps``, ``end_lr_factor``) in a run of ``total_steps`` updates
    (the decay's length when ``decay_steps`` is 0); equals
    ``vasa_jax.train.state.lr_schedule(cfg, total_steps)(step)``."""
    peak = float(cfg.lr)
    warmup = max(int(cfg.warmup_steps), 1)
    decay = max(int(cfg.decay_steps or total_steps), int(cfg.warmup_steps) + 1)
    end = peak * float(cfg.end_lr_factor)
    if step < warmup:
        return peak * step / warmup
    alpha = 0.0 if peak == 0.0 else end / peak
    span = decay - warmup
    t = min(step - warmup, span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * t / span))
    return peak * ((1.0 - alpha) * cosine + alpha)


@torch.no_grad()
def clip_grad_global_norm_(params: Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale the gradients of ``params`` in place so that their global L2 norm is at most
    ``max_norm`` (optax.clip_by_global_norm); returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.sqrt(sum(torch.sum(g.double() ** 2) for g in grads)).item()
    if norm >= max_norm:
        scale = max_norm / norm
        for g in grads:
            g.mul_(scale)
    return norm


class AdamWLikeOptax:
    """Clip + AdamW + warmup-cosine schedule over named parameters, mirroring our optax chain.

    Args:
      named_params: (name, parameter) pairs, e.g. ``model.named_parameters()``.
      cfg: an ``optim`` config (``lr``, ``warmup_steps``, ``decay_steps``, ``end_lr_factor``,
        ``b1``, ``b2``, ``eps``, ``weight_decay``, ``clip_norm``).
      total_steps: the run's length (``train.steps``): the schedule's decay length when
        ``cfg.decay_steps`` is 0.
      decay_names: the names that get weight decay; None = parameters with ndim >= 2 (our mask).
    """

    def __init__(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: Any,
                 total_steps: int, decay_names: Iterable[str] | None = None):
        named = [(n, p) for n, p in named_params if p.requires_grad]
        names = {n for n, _ in named}
        if decay_names is None:
            decay = {n for n, p in named if p.ndim >= 2}
        else:
            decay = set(decay_names)
            unknown = sorted(decay - names)
            if unknown:
                raise ValueError(f"decay_names not among the parameters: {unknown}.")
        self.cfg, self.total_steps = cfg, int(total_steps)
        self.decay_names = frozenset(decay)
        self.params = [p for _, p in named]
        groups = [{"params": [p for n, p in named if n in decay],
                   "weight_decay": float(cfg.weight_decay)},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=0.0, betas=(float(cfg.b1), float(cfg.b2)),
            eps=float(cfg.eps), foreach=False)
        self.count = 0  # updates applied (optax's count)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> dict[str, float]:
        """Clip the gradients, set this update's lr, apply AdamW. Returns {"grad_norm" (before
        clipping), "lr"}."""
        norm = clip_grad_global_norm_(self.params, float(self.cfg.clip_norm))
        lr = warmup_cosine_lr(self.count, self.cfg, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.count += 1
        return {"grad_norm": norm, "lr": lr}

    def state_dict(self) -> Mapping[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.count = int(state["count"])
