"""Checkpoints: an orbax ``CheckpointManager`` holding the train state, the grain iterator state
and the config, saved asynchronously, keeping the newest N.

Restoring takes an abstract train state whose leaves carry the *target* shardings, so a
checkpoint written on one mesh restores onto any other mesh shape.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
    """Save/restore ``(state, data iterator, config)`` under ``directory``."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1000, use_async: bool = True, create: bool = True):
        self.directory = epath.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=use_async, create=create)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any, config: Any, *,
             force: bool = False) -> bool:
        """Save if ``step`` is on the interval (or ``force``); returns whether it saved."""
        args = {"state": ocp.args.StandardSave(state),
                "config": ocp.args.JsonSave(_config_dict(config))}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, abstract_state: Any, data_iterator: Any = None, step: int | None = None
                ) -> tuple[int, Any]:
        """Restore ``step`` (default: latest) into the shapes/shardings of ``abstract_state``;
        the data iterator, if given, is restored in place. Returns (step, state)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        return step, out["state"]

    def restore_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return out["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _config_dict(config: Any) -> dict:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, default=str))


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``state`` carrying ``shardings`` (the restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


def _reader(directory: str | os.PathLike) -> ocp.CheckpointManager:
    """A read-only manager over ``directory`` whose train state restores partially."""
    return ocp.CheckpointManager(
        epath.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})


def read_config(directory: str | os.PathLike, step: int | None = None) -> tuple[int, dict]:
    """(step, stored config dict) of checkpoint ``step`` (default: the latest) in
    ``directory``; FileNotFoundError when there is none."""
    manager = _reader(directory)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {directory}.")
        out = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return step, out["config"]
    finally:
        manager.close()


def read_state_subtree(directory: str | os.PathLike, target: Any, step: int) -> Any:
    """Only the parts of the stored train state that ``target`` names (a nested dict of
    ``jax.ShapeDtypeStruct`` with shardings, keyed like the train state: e.g. ``{"ema": ...,
    "rest": ...}``), read from checkpoint ``step``; the optimiser state is never read."""
    manager = _reader(directory)
    try:
        restore_args = jax.tree.map(
            lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                           dtype=x.dtype), target)
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)))
        return out["state"]
    finally:
        manager.close()
