"""What a stage contributes to the shared trainer.

A ``Task`` knows its model, its data, its loss and its evaluation; the trainer does the rest
(mesh, sharded init, optimisers, EMA, the non-finite guard, metrics, checkpoints, multi-host).
Parameters are split into named groups by nnx filters (``param_groups``), each with its own
optimiser; a task with several groups (a GAN) overrides ``grads``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
from flax import nnx


class Task:
    """Base class. Subclasses set ``name`` and implement the methods that raise."""

    name = "task"
    # Ordered {group: nnx filter}; variables matching no filter go to the non-trained ``rest``.
    param_groups: Mapping[str, Any] = {"model": nnx.Param}
    ema_groups: tuple[str, ...] = ("model",)

    def __init__(self, config):
        self.config = config

    # -- model ---------------------------------------------------------------------------------
    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        raise NotImplementedError

    def prepare(self) -> None:
        """Host-side preparation before the model is built (e.g. dataset statistics)."""

    def init_model(self, model: nnx.Module) -> None:
        """Called on the freshly built model inside the sharded init (e.g. install statistics)."""

    # -- data ----------------------------------------------------------------------------------
    def train_loader(self):
        """Grain dataset of per-process training batches (infinite, checkpointable)."""
        raise NotImplementedError

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Host batch -> the arrays the step needs (NumPy, leading per-process batch dim)."""
        raise NotImplementedError

    # -- objective -----------------------------------------------------------------------------
    def loss(self, model: nnx.Module, batch: Mapping[str, jax.Array], key: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, metrics) for one global batch."""
        raise NotImplementedError

    def grads(self, graphdef, params: dict[str, Any], rest: Any, batch, key
              ) -> tuple[dict[str, Any], jax.Array, dict[str, jax.Array]]:
        """Gradients per group, the loss, and metrics. Default: one loss for all groups."""
        def f(p):
            model = nnx.merge(graphdef, *[p[g] for g in self.param_groups], rest)
            return self.loss(model, batch, key)

        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
        return grads, loss, metrics

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, trainer, step: int) -> dict[str, float]:
        """Scalars to log at evaluation steps (runs on every process; process 0 writes)."""
        return {}

    def images(self, trainer, step: int) -> dict[str, Any]:
        """Images to log every ``train.image_every`` steps: {name: (n, h, w, 3) uint8}
        (runs on every process; process 0 writes)."""
        return {}
