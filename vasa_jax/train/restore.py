"""Rebuild a trained task from its workdir (config and weights from the latest checkpoint)."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import nnx

from vasa_jax.checkpoint import Checkpointer


def load_trainer(workdir: str, *, step: int | None = None, mesh_shape=(-1, 1, 1)):
    """A ``Trainer`` whose state is the checkpoint's, on this host's devices. ``workdir`` is a
    local path or any path etils/orbax open (e.g. gs://bucket/run).

    Returns (trainer, step). Raises FileNotFoundError with the fix if there is no checkpoint.
    """
    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer

    ckpt_dir = os.path.join(workdir, "checkpoints")
    exists = epath.Path(ckpt_dir).is_dir()
    ckpt = Checkpointer(ckpt_dir, use_async=False, create=False) if exists else None
    if ckpt is None or ckpt.latest_step() is None:
        raise FileNotFoundError(f"No checkpoint under {ckpt_dir}. Train first, e.g. "
                                f"`vasa-jax train motion --workdir {workdir}`.")
    step = ckpt.latest_step() if step is None else step
    config = ml_collections.ConfigDict(ckpt.restore_config(step))
    config.mesh_shape = tuple(mesh_shape)
    config.num_devices = 0
    config.axis_rules = tuple(tuple(r) for r in config.axis_rules)
    trainer = Trainer(make_task(config), config, workdir, prepare=False)
    _, trainer.state = ckpt.restore(trainer.abstract_state(), step=step)
    ckpt.close()
    return trainer, step


def host_model(trainer, ema: bool = True) -> nnx.Module:
    """The trainer's model with its parameters gathered to this host (usable outside the mesh).
    A collective when there are several processes: every process must call it."""
    from jax.experimental import multihost_utils

    model = trainer.model(ema=ema)
    graphdef, state = nnx.split(model)
    if jax.process_count() > 1:
        state = multihost_utils.process_allgather(state, tiled=True)
    else:
        state = jax.device_get(state)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, state))


def main_process_model(trainer, ema: bool = True) -> nnx.Module | None:
    """``host_model`` for work only process 0 does (evaluation, images): every process must call
    it (gathering is a collective); process 0 gets the model, the others None."""
    model = host_model(trainer, ema=ema)
    return model if jax.process_index() == 0 else None


def restore_run(workdir: str, task: str, what: str, fix: str, *, step: int | None = None):
    """(host model with EMA weights, step, config) of the ``task`` run in ``workdir``, for a
    measuring instrument. FileNotFoundError naming ``fix`` (how to train it) without a checkpoint;
    ValueError when the workdir holds another task's run. ``what`` names it in messages."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if "://" not in workdir and not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"No {what} checkpoint under {ckpt_dir}. {fix}")
    try:
        trainer, step = load_trainer(workdir, step=step)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"No {what} checkpoint under {ckpt_dir}. {fix}") from e
    if trainer.config.task != task:
        raise ValueError(f"{workdir} holds a {trainer.config.task!r} run, not {what}.")
    return host_model(trainer), step, trainer.config


def read_heldout(workdir: str, filename: str) -> dict:
    """An instrument's held-out metrics (``workdir/filename``), JSON nulls (undefined
    correlations) read as NaN."""
    with open(os.path.join(workdir, filename)) as f:
        return {k: (math.nan if v is None else v) for k, v in json.load(f).items()}


def write_heldout(workdir: str, filename: str, metrics: dict) -> str:
    """Write an instrument's held-out metrics to ``workdir/filename`` atomically, NaN (an
    undefined correlation) as JSON null; the inverse of ``read_heldout``. Returns the path."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in metrics.items()}
    path = os.path.join(workdir, filename)
    with open(path + ".tmp", "w") as f:
        json.dump(clean, f, indent=1, allow_nan=False)
    os.replace(path + ".tmp", path)
    return path
