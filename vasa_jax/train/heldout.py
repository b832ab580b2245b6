"""(Re)write a trained instrument's held-out figures from its run directory.

Training writes them when it ends (``InstrumentTask.finish``); this is for a run trained with
``eval.heldout_after_training=False``, or to measure on another split or dataset.
"""

from __future__ import annotations

from typing import Any

from vasa_jax.models import restore_model
from vasa_jax.train.tasks import make_task


def write_heldout(workdir: str, config=None, *, split: str | None = None,
                  max_clips: int | None = None) -> dict[str, Any]:
    """Measure the instrument trained in ``workdir`` (EMA weights of its latest checkpoint) and
    write its held-out file there. ``config`` locates the data (default: the checkpoint's);
    ``split`` defaults to ``config.eval.split``, ``max_clips`` to ``config.eval.max_clips`` (0:
    all). Returns the metrics. Run it in one process."""
    run = restore_model(workdir)
    task = make_task(run.config if config is None else config)
    if not hasattr(task, "write_heldout"):
        raise ValueError(f"{workdir} holds a {run.config.task!r} run, which is not a measuring "
                         f"instrument (probe, syncnet, capp).")
    return task.write_heldout(run.model, workdir, run.step, split=split, max_clips=max_clips)
