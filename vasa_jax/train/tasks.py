"""Task registry: ``config.task`` -> the stage's ``Task``."""

from __future__ import annotations

from vasa_jax.train.task import Task


def make_task(config) -> Task:
    if config.task == "motion":
        from vasa_jax.train.motion_task import MotionTask

        return MotionTask(config)
    raise ValueError(f"Unknown task {config.task!r}; known: motion.")
