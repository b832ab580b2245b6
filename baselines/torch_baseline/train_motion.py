"""Training steps for the PyTorch MotionDiT baseline: the stage-2 loss
(``baselines.torch_baseline.diffusion.training_loss``) with our optimiser's twin
(``baselines.torch_baseline.optim.AdamWLikeOptax``).

Every random draw (timesteps, noise, condition drops) and every batch is an argument, so a run
can be fed exactly what our JAX trainer sees (``launch/compare_convergence.py`` does).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch

from baselines.torch_baseline import diffusion as tdiff
from baselines.torch_baseline.motion_dit import MotionDiT, make_motion_dit
from baselines.torch_baseline.optim import AdamWLikeOptax

BATCH_KEYS = ("motion", "audio_features", "gaze", "distance", "emotion")


def to_torch(x: Any) -> torch.Tensor:
    """A numpy array (or anything ``np.asarray`` takes) -> a CPU tensor with the same dtype."""
    return torch.from_numpy(np.array(x, copy=True))


class MotionTrainer:
    """A torch MotionDiT, its noise schedule and optimiser, stepping on given batches.

    Args:
      config: a ``configs/motion.py`` config (``model``, ``diffusion``, ``optim``, ``train.steps``
        are used).
      weights: torch-named arrays (``vasa_jax.interop.motion_dit.flax_to_torch``), loaded with
        ``strict=True``; None keeps torch's own initialisation.
      decay_names: parameter names with weight decay (None: ndim >= 2, as ours).
    """

    def __init__(self, config: Any, weights: Mapping[str, np.ndarray] | None = None,
                 decay_names: Iterable[str] | None = None):
        self.config = config
        self.model: MotionDiT = make_motion_dit(config.model)
        if weights is not None:
            self.model.load_state_dict({k: to_torch(v) for k, v in weights.items()}, strict=True)
        self.schedule = tdiff.make_schedule(config.diffusion.schedule,
                                            config.diffusion.train_steps)
        self.velocity_weight = float(config.diffusion.velocity_weight)
        self.optimizer = AdamWLikeOptax(self.model.named_parameters(), config.optim,
                                        config.train.steps, decay_names)
        self.model.train()

    def step(self, batch: Mapping[str, np.ndarray], t: np.ndarray, noise: np.ndarray,
             drops: Mapping[str, np.ndarray]) -> dict[str, float]:
        """One update.

        Args:
          batch: ``motion`` (B, K+W, M), ``audio_features`` (B, K+W, A) in data units,
            ``gaze`` (B, 2), ``distance`` (B,), ``emotion`` (B,) int (other keys ignored).
          t: (B,) int timesteps; noise: (B, W, M); drops: per-condition (B,) bools and
            ``audio_frames`` (B, W) bool.

        Returns:
          {"loss", "x0_mse", "velocity_mse"} before the update, {"grad_norm" (before
          clipping), "lr"} of the update.
        """
        tb = {k: to_torch(batch[k]) for k in BATCH_KEYS}
        self.optimizer.zero_grad()
        loss, aux = tdiff.training_loss(self.model, self.schedule, tb, to_torch(t),
                                        to_torch(noise), {k: to_torch(v) for k, v in drops.items()},
                                        velocity_weight=self.velocity_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"torch loss is not finite at update {self.optimizer.count}:"
                                     f" {loss.item()}.")
        loss.backward()
        out = {"loss": loss.item(), **{k: v.item() for k, v in aux.items()}}
        out.update(self.optimizer.step())
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """The model's torch-named arrays (parameters and statistics)."""
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
