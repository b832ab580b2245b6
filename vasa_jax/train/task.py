"""What a stage contributes to the shared trainer.

A ``Task`` knows its data, its loss and its evaluation; its network and the network's parameter
groups come from ``vasa_jax.models`` (``config.task``); the trainer does the rest (mesh, sharded
init, optimisers, EMA, the non-finite guard, metrics, checkpoints, multi-host). Parameters are
split into named groups by nnx filters (``param_groups``), each with its own optimiser; a task
with several groups (a GAN) overrides ``grads``.

Evaluation hooks (``evaluate``, ``images``, ``finish``) run on process 0 only and receive the
model with its EMA weights gathered to that host by the trainer.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
from flax import nnx

from data_pipeline import views
from data_pipeline.loader import LoaderConfig, make_loader
from vasa_jax import models, parallel


class Task:
    """Base class. Subclasses set ``name`` and implement the methods that raise."""

    name = "task"

    def __init__(self, config):
        self.config = config
        # Ordered {group: nnx filter}; variables matching no filter go to the non-trained
        # ``rest``.
        self.param_groups: Mapping[str, Any] = models.param_groups(config.task)
        self.ema_groups: tuple[str, ...] = models.ema_groups(config.task)

    # -- model ---------------------------------------------------------------------------------
    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return models.build_model(self.config, rngs)

    def prepare(self) -> None:
        """Host-side preparation before the model is built (e.g. dataset statistics)."""

    def init_model(self, model: nnx.Module) -> None:
        """Called on the freshly built model inside the sharded init (e.g. install statistics)."""

    # -- data ----------------------------------------------------------------------------------
    def loader_config(self, batch_size: int) -> LoaderConfig:
        """The training stream's ``LoaderConfig`` (``data_pipeline.views``) with ``batch_size``
        examples per process."""
        raise NotImplementedError

    def clip_transforms(self) -> list[Any]:
        """Per-clip transforms the loader applies before windowing (e.g. audio features)."""
        return []

    def train_loader(self, start_batch: int = 0):
        """Grain dataset of per-process training batches (infinite), from global batch
        ``start_batch`` on (``data_pipeline.loader.make_loader``): a resumed run passes its step."""
        cfg = self.loader_config(parallel.batch_size_per_process(self.config.data.batch_size))
        return make_loader(cfg, clip_transforms=self.clip_transforms(), start_batch=start_batch)

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Host batch -> the arrays the step needs (NumPy, leading per-process batch dim)."""
        raise NotImplementedError

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of ``device_batch``'s arrays for ``batch_size`` examples, without
        reading data (what an ahead-of-time compile, ``vasa_jax.plan``, needs)."""
        raise NotImplementedError(f"The {self.name} task cannot describe its batch without "
                                  f"data; only the stages can be planned.")

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
    def evaluate(self, model: nnx.Module, step: int) -> dict[str, float]:
        """Scalars to log every ``train.eval_every`` steps."""
        return {}

    def eval_clips(self, split: str, max_clips: int, **read) -> list[dict[str, Any]]:
        """The first ``max_clips`` whole clips of ``split`` (``data_pipeline.views.read_clips``
        with ``read``), read once and kept for every later evaluation."""
        key = (split, max_clips, tuple(sorted(read.items())))
        cache = self.__dict__.setdefault("_eval_clip_cache", {})
        if key not in cache:
            cache[key] = views.read_clips(self.config, split, max_clips, **read)
        return cache[key]

    def images(self, model: nnx.Module, step: int) -> dict[str, Any]:
        """Images to log every ``train.image_every`` steps: {name: (n, h, w, 3) uint8}."""
        return {}

    def finish(self, model: nnx.Module, workdir: str, step: int) -> None:
        """Called once when training reaches ``train.steps``: e.g. an instrument writes its
        held-out accuracy beside its checkpoint."""


class InstrumentTask(Task):
    """A measuring instrument's task (probe, SyncNet, CAPP): when training ends it measures the
    trained network on held-out identities (``eval.split``, default ``test``) and writes the
    figures beside the checkpoint (``vasa_jax.instruments.load`` requires them), unless
    ``eval.heldout_after_training`` is False. Subclasses implement ``measure``."""

    def measure(self, model: nnx.Module, split: str, max_clips: int) -> dict[str, Any]:
        """The held-out metrics of ``model`` on the first ``max_clips`` (0: all) clips of
        ``split``."""
        raise NotImplementedError

    def write_heldout(self, model: nnx.Module, workdir: str, step: int, *,
                      split: str | None = None, max_clips: int | None = None) -> dict[str, Any]:
        """Measure ``model`` (``split`` default ``eval.split``, ``max_clips`` default
        ``eval.max_clips``) and write the instrument's held-out file in ``workdir``; returns
        the metrics."""
        from absl import logging

        from vasa_jax.instruments.load import write_heldout_file

        e = self.config.eval
        split = split or e.split
        max_clips = e.max_clips if max_clips is None else max_clips
        res = dict(self.measure(model, split, max_clips))
        res.update(split=split, dataset=f"{self.config.data.dataset}/{self.config.data.config}",
                   step=int(step))
        path = write_heldout_file(workdir, self.name, res)
        logging.info("%s held-out metrics (%s): %s", self.name, path, res)
        return res

    def finish(self, model: nnx.Module, workdir: str, step: int) -> None:
        if self.config.eval.get("heldout_after_training", True):
            self.write_heldout(model, workdir, step)
