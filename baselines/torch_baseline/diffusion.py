"""PyTorch diffusion objective for MotionDiT: the noise schedules, the forward process and the
x0 training loss of ``vasa_jax.motion.diffusion`` / ``vasa_jax.train.motion_task``.

All randomness is explicit (timesteps, noise, drop masks are arguments), so the two frameworks
can be fed identical draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from baselines.torch_baseline.motion_dit import MotionDiT


@dataclass(frozen=True)
class Schedule:
    """Noise schedule over ``T`` training timesteps (both (T,) float32)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def make_schedule(kind: str = "cosine", num_steps: int = 1000) -> Schedule:
    """``linear`` (Ho et al. 2020, rescaled to ``num_steps``) or ``cosine`` (Nichol & Dhariwal
    2021, s = 0.008, betas clipped at 0.999); computed in float64, stored as float32."""
    if kind == "linear":
        scale = 1000.0 / num_steps
        betas = np.linspace(scale * 1e-4, scale * 2e-2, num_steps, dtype=np.float64)
    elif kind == "cosine":
        s = 0.008
        steps = np.linspace(0, num_steps, num_steps + 1, dtype=np.float64) / num_steps
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        ac = f / f[0]
        betas = np.clip(1.0 - ac[1:] / ac[:-1], 0.0, 0.999)
    else:
        raise ValueError(f"Unknown noise schedule {kind!r}; use 'cosine' or 'linear'.")
    ac = np.cumprod(1.0 - betas)
    return Schedule(torch.from_numpy(betas.astype(np.float32)),
                    torch.from_numpy(ac.astype(np.float32)))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise; x0/noise (B, ...), t (B,) int."""
    ac = schedule.alphas_cumprod.to(x0.device)[t.long()].view((-1,) + (1,) * (x0.dim() - 1))
    return torch.sqrt(ac) * x0 + torch.sqrt(1.0 - ac) * noise


def x0_loss(pred: torch.Tensor, x0: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example mean squared error (B, W, M) -> (B,), optionally over ``mask`` only."""
    err = (pred - x0).square()
    dims = tuple(range(1, err.dim()))
    if mask is not None:
        err = err * mask
        return err.sum(dims) / mask.expand_as(err).sum(dims).clamp_min(1.0)
    return err.mean(dims)


def velocity_loss(pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-example mean squared error of frame-to-frame differences (B, W, M) -> (B,)."""
    diff = lambda x: x[:, 1:] - x[:, :-1]  # noqa: E731
    return (diff(pred) - diff(x0)).square().mean(dim=(1, 2))


def training_loss(model: MotionDiT, schedule: Schedule, batch: Mapping[str, torch.Tensor],
                  t: torch.Tensor, noise: torch.Tensor, drop: Mapping[str, torch.Tensor], *,
                  velocity_weight: float = 0.0
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-2 objective on a batch of K + W frame windows (``MotionTask.loss`` with the draws
    passed in).

    Args:
      batch: ``motion`` (B, K+W, M) and ``audio_features`` (B, K+W, A) in data units (the
        model's statistics normalise them), ``gaze`` (B, 2), ``distance`` (B,), ``emotion`` (B,).
      t: (B,) int timesteps; noise: (B, W, M); drop: per-condition (B,) bools and
        ``audio_frames`` (B, W) (see ``MotionDiT.forward``).

    Returns:
      (scalar loss, {"x0_mse", "velocity_mse"}).
    """
    k = model.context
    motion = model.normalize_motion(batch["motion"].float())
    audio = model.normalize_audio(batch["audio_features"].float())
    x0 = motion[:, k:]
    x_t = q_sample(schedule, x0, t, noise)
    cond = {"audio": audio[:, k:], "audio_pre": audio[:, :k], "motion_pre": motion[:, :k],
            "gaze": batch["gaze"], "distance": batch["distance"], "emotion": batch["emotion"]}
    pred = model(x_t, t, cond, drop)
    x0_mse = x0_loss(pred, x0).mean()
    vel_mse = velocity_loss(pred, x0).mean()
    return x0_mse + velocity_weight * vel_mse, {"x0_mse": x0_mse, "velocity_mse": vel_mse}
