"""Rebuild a trained task from its workdir (config and weights from the latest checkpoint)."""

from __future__ import annotations

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
