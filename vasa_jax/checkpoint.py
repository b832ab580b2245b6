"""Checkpoints: an orbax ``CheckpointManager`` holding the train state and the config, saved
asynchronously, keeping the newest N. The data position needs no state of its own: the loader's
stream is a function of the global batch index alone (``data_pipeline.loader``), so a resumed run
starts its loader at the restored step, on any number of processes or loader workers.

Restoring takes an abstract train state whose leaves carry the *target* shardings, so a
checkpoint written on one mesh restores onto any other mesh shape. Restoring the latest step
falls back to the previous one when its files cannot be read (a save killed part-way leaves only
a temporary directory, which is never listed; a truncated file is caught on reading), and the
stored shapes and config can be compared with a resuming run's (``stored_shapes``,
``shape_differences``, ``config_differences``) before anything is read.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils


class CheckpointMismatch(ValueError):
    """A readable checkpoint that does not fit the run resuming from it (other parameter
    shapes, or a changed config that was not allowed)."""


class Checkpointer:
    """Save/restore ``(state, config)`` under ``directory``."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1000, use_async: bool = True, create: bool = True,
                 cleanup_tmp: bool = False):
        """``cleanup_tmp``: delete the temporary directories of saves that never finished (a
        process killed mid-save leaves ``<step>.orbax-checkpoint-tmp-*``, which restores
        ignore); only for the one process that owns the directory, i.e. the trainer."""
        self.directory = epath.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=use_async, create=create,
            cleanup_tmp_directories=cleanup_tmp)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, config: Any, *, force: bool = False) -> bool:
        """Save if ``step`` is on the interval (or ``force``); returns whether it saved."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  config=ocp.args.JsonSave(config_dict(config)))
        return self.manager.save(step, args=args, force=force)

    def should_save(self, step: int) -> bool:
        """Whether ``save(step)`` (without ``force``) would write a checkpoint."""
        return self.manager.should_save(step)

    def restore(self, abstract_state: Any, step: int | None = None, *,
                check: Callable[[int], None] | None = None, set_aside: bool = False
                ) -> tuple[int, Any]:
        """Restore ``step`` into the shapes/shardings of ``abstract_state``. Returns
        (step, state).

        Without ``step``: the newest step that can be read. A step whose files cannot be read
        (truncated or missing files, e.g. a disk that filled up or a copy cut short) is passed
        over with a warning naming it, and the previous step is tried, so one bad save does not
        make the whole run unusable. ``check(step)``, called before each step is restored, may
        raise ``CheckpointMismatch`` (the checkpoint is fine but does not fit this run): that
        stops at once, it is never taken for damage. ``set_aside`` (the trainer's resume) moves
        the unreadable steps into ``<directory>.unreadable/`` once an older one was restored:
        otherwise the manager would still count them as the latest and save nothing until the
        run passed them again."""
        if step is not None:
            if check is not None:
                check(step)
            return step, self._restore(step, abstract_state)
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        failures = []
        for s in steps:
            try:
                if check is not None:
                    check(s)
                state = self._restore(s, abstract_state)
            except (CheckpointMismatch, ConnectionError, TimeoutError):
                raise  # a misfit or an unreachable store, not a damaged step
            except Exception as e:  # noqa: BLE001 -- any read error means: try the step before
                failures.append((s, f"{type(e).__name__}: {_first_line(e)}"))
                logging.warning("Checkpoint step %d in %s is unreadable (%s); falling back to the "
                                "previous step.", s, self.directory, failures[-1][1])
                continue
            if failures:
                logging.warning("Restored step %d of %s; unreadable newer step(s) %s were passed "
                                "over.", s, self.directory, [f for f, _ in failures])
                if set_aside:
                    self._set_aside([f for f, _ in failures])
            return s, state
        raise RuntimeError(
            f"No checkpoint step in {self.directory} could be restored:\n"
            + "\n".join(f"  step {s}: {why}" for s, why in failures)
            + "\nThe files are damaged (or not an orbax checkpoint of this project): restore "
            "them from a copy or start a new workdir.")

    def _restore(self, step: int, abstract_state: Any) -> Any:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        return self.manager.restore(step, args=args)["state"]

    def _set_aside(self, steps: list[int]) -> None:
        """Move unreadable step directories out of the manager's view (process 0 moves, every
        process then re-lists the steps); nothing is deleted."""
        aside = self.directory.parent / f"{self.directory.name}.unreadable"
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            for s in steps:
                target = aside / f"{s}.{int(time.time())}"
                (self.directory / str(s)).rename(target)
                logging.warning("Moved unreadable checkpoint step %d to %s.", s, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("vasa_jax_checkpoint_set_aside")
        self.manager.reload()

    def stored_shapes(self, step: int) -> dict[str, tuple]:
        """{path: (shape, dtype)} of the train state stored at ``step``, from its metadata
        (no array is read). Paths look like ``params/model/blocks/0/attn/kernel``."""
        meta = self.manager.item_metadata(step)["state"]
        if meta is None:
            raise FileNotFoundError(f"Step {step} in {self.directory} has no train state.")
        return {path_name(p): (tuple(m.shape), str(m.dtype))
                for p, m in jax.tree_util.tree_flatten_with_path(meta)[0]}

    def restore_config(self, step: int | None = None) -> dict:
        """The config dict stored with ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return out["config"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def config_dict(config: Any) -> dict:
    """``config`` as the JSON-able dict a checkpoint stores."""
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


def path_name(path: tuple) -> str:
    """A pytree key path as ``params/model/blocks/0/kernel`` (nnx's trailing ``value`` left
    out): the same name for the live train state and for the stored metadata."""
    parts = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path]
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    return "/".join(parts)


def shape_differences(stored: dict[str, tuple], abstract_state: Any) -> list[str]:
    """Where ``abstract_state`` (the train state this run builds) and a checkpoint's
    ``stored_shapes`` disagree: one line per array naming its path and both shapes (or that it
    exists on one side only)."""
    live = {path_name(p): (tuple(x.shape), str(x.dtype))
            for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    lines = []
    for name in sorted(set(live) | set(stored)):
        if name not in stored:
            lines.append(f"{name}: not in the checkpoint; this model has shape {live[name][0]}")
        elif name not in live:
            lines.append(f"{name}: shape {stored[name][0]} in the checkpoint; not in this model")
        elif live[name][0] != stored[name][0]:
            lines.append(f"{name}: shape {stored[name][0]} in the checkpoint, "
                         f"{live[name][0]} in this model")
    return lines


def flatten_config(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"model.width": 32, ...}``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


_ABSENT = "(absent)"


def config_differences(stored: dict, new: Any) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (stored value, new value)} for every field where the config stored with a
    checkpoint and ``new`` (a ConfigDict) differ; a field on one side only shows ``(absent)``
    on the other. Values are compared as the checkpoint stores them (JSON)."""
    a, b = flatten_config(stored), flatten_config(config_dict(new))
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:limit]
