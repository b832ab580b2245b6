"""Rebuild a trained task from its workdir (config and weights from the latest checkpoint)."""

from __future__ import annotations

import os

import ml_collections

from vasa_jax.checkpoint import Checkpointer


def load_trainer(workdir: str, *, step: int | None = None, mesh_shape=(-1, 1, 1)):
    """A ``Trainer`` whose state is the checkpoint's, on this host's devices.

    Returns (trainer, step). Raises FileNotFoundError with the fix if there is no checkpoint.
    """
    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer

    ckpt_dir = os.path.join(workdir, "checkpoints")
    ckpt = Checkpointer(ckpt_dir, use_async=False, create=False) if os.path.isdir(ckpt_dir) else None
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
