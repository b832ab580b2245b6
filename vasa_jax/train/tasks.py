"""Task registry: ``config.task`` -> the stage's ``Task``."""

from __future__ import annotations

from vasa_jax.train.task import Task


def make_task(config) -> Task:
    if config.task == "motion":
        from vasa_jax.train.motion_task import MotionTask

        return MotionTask(config)
    if config.task == "latent":
        from vasa_jax.train.latent_task import LatentTask

        return LatentTask(config)
    if config.task == "probe":
        from vasa_jax.train.probe_task import ProbeTask

        return ProbeTask(config)
    if config.task == "capp":
        from vasa_jax.train.capp_task import CappTask

        return CappTask(config)
    if config.task == "syncnet":
        from vasa_jax.train.syncnet_task import SyncNetTask

        return SyncNetTask(config)
    raise ValueError(f"Unknown task {config.task!r}; known: motion, latent, probe, capp, "
                     f"syncnet.")
