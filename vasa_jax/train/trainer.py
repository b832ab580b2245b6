"""The trainer both stages use.

Mesh from the config (axes ``('data', 'fsdp', 'tensor')``, -1 fills), logical-axis rules per
config, shape-first sharded initialisation of the whole train state, ONE ``jax.jit`` train step
with ``in_shardings``/``out_shardings`` and donation, AdamW with warmup + cosine and clipping per
parameter group, an EMA of the parameters, a non-finite guard (the update is skipped and counted),
clu metric writers (TensorBoard + log + ``metrics.jsonl``; only process 0 writes),
``ReportProgress``, a profiler hook, periodic evaluation, orbax checkpoints of state + config
(a resumed run's loader starts at the restored step), and a SIGTERM handler that saves before
exiting.

Nothing lost, nothing silent: ``train.max_nonfinite_steps`` skipped steps in a row stop the run
(``NonFiniteSteps``) without saving; the loader's skipped damaged records are logged
(``data/skipped_*``) and too many stop the run (``TooManyBadRecords``); a resume checks the
stored config against the new one (``CheckpointMismatch``: other parameter shapes always, other
training values unless ``allow_config_change``) and passes over an unreadable latest step.

Randomness: the step key is ``fold_in(PRNGKey(seed), step)`` and tasks derive per-example keys
from each example's global stream position, so a resumed run repeats the uninterrupted one and
the result does not depend on the number of processes (a run may resume on another process or
loader-worker count).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.experimental import multihost_utils

from data_pipeline.loader import SkippedRecords
from vasa_jax import models, parallel
from vasa_jax.checkpoint import (Checkpointer, CheckpointMismatch, abstract_like,
                                 config_differences, shape_differences)
from vasa_jax.train.state import (TrainState, all_finite, ema_update, lr_schedule,
                                  make_optimizer, update_groups)
from vasa_jax.train.task import Task


class Preempted(SystemExit):
    """Raised after a SIGTERM was handled: a checkpoint was saved at ``step``."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


class NonFiniteSteps(RuntimeError):
    """``train.max_nonfinite_steps`` steps in a row had a non-finite loss, gradients or update."""


class _NonFiniteStreak:
    """Counts consecutive skipped (non-finite) steps without a host sync per step: each step's
    ``skipped`` flag stays on the device until ``longest_since`` fetches them all, which the
    loop calls only where it waits for the device anyway (log steps fetch the metrics,
    checkpoint saves copy the state)."""

    def __init__(self):
        self.pending: list[jax.Array] = []
        self.run = 0  # skipped steps in a row up to the last fetched flag

    def add(self, skipped: jax.Array) -> None:
        self.pending.append(skipped)

    def longest_since(self, step: int) -> tuple[int, int]:
        """Fetch the flags up to ``step``: (longest run of skipped steps ending at or after the
        previous fetch, its first step)."""
        flags = [bool(f) for f in jax.device_get(self.pending)]
        self.pending = []
        longest, first = self.run, step - len(flags) + 1 - self.run
        for i, bad in enumerate(flags):
            self.run = self.run + 1 if bad else 0
            if self.run > longest:
                longest, first = self.run, step - len(flags) + 2 + i - self.run
        return longest, first


# Config fields that change how a run is executed or observed, not what it trains: a resume
# with other values of these needs no --allow-config-change (prefixes end with a dot).
RESUME_FREE_FIELDS = ("variant", "mesh_shape", "num_devices", "axis_rules", "train.log_every",
                      "train.eval_every", "train.image_every", "train.checkpoint_every",
                      "train.keep_checkpoints", "train.async_checkpoints", "train.profile_steps",
                      "train.profile_first_step", "train.max_nonfinite_steps",
                      "data.max_skipped_fraction", "data.skip_check_after", "model.remat", "eval.",
                      "sample.")


def _resume_free(field: str) -> bool:
    return any(field == f or (f.endswith(".") and field.startswith(f))
               for f in RESUME_FREE_FIELDS)


def _diff_lines(changes: dict) -> str:
    return "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


class _PreemptionNotice:
    """SIGTERM (a preemption notice) -> every process saves and stops at the same step, without
    a collective per step (which would make every step wait for the device and stop host work
    from overlapping device work).

    Several processes: JAX's preemption service (on by default in ``jax.distributed``) catches
    SIGTERM in the process that gets it and tells the coordination service;
    ``multihost_utils.reached_preemption_sync_point(step)`` then becomes True in every process at
    the same step (one past the largest step any process had reached), a local check otherwise;
    orbax's ``CheckpointManager.save`` honours the same point. One process: a Python handler
    records the signal. If the service is switched off (``jax_enable_preemption_service``), the
    handler records it and the processes agree by an allgather at the steps that already wait
    for the device (``synced``: log steps)."""

    def __init__(self):
        self.raised = False
        self._previous = None
        self._service = False

    def __enter__(self):
        self._service = (jax.process_count() > 1
                         and bool(jax.config.jax_enable_preemption_service))
        if not self._service:  # the service's own handler must not be replaced
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook thread): no handler
                self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, step: int, synced: bool) -> bool:
        """Whether every process stops after ``step`` (call once per step, in every process)."""
        if self._service:
            return multihost_utils.reached_preemption_sync_point(step)
        if jax.process_count() == 1:
            return self.raised
        if not synced:
            return False
        flags = multihost_utils.process_allgather(np.array([self.raised], np.int32))
        return bool(np.asarray(flags).any())


class JsonlWriter(metric_writers.interface.MetricWriter):
    """Scalars as JSON lines ``{"step": s, name: value, ...}`` (easy to diff and plot)."""

    def __init__(self, path: str):
        self._path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._f = open(path, "a", buffering=1)

    def write_scalars(self, step, scalars):
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        self._f.write(json.dumps(row) + "\n")

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        self._f.flush()

    def close(self):
        self._f.close()


def read_metrics(workdir: str) -> list[dict]:
    """The rows of ``workdir/metrics.jsonl``."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Trainer:
    """Builds everything for ``task`` on the mesh in ``config`` and runs the loop."""

    def __init__(self, task: Task, config, workdir: str | None, *, prepare: bool = True,
                 devices: Sequence[Any] | None = None, materialize: bool = True):
        """``prepare=False`` skips the task's host-side preparation (dataset statistics), for a
        trainer whose state will be restored from a checkpoint. ``devices`` (default: this
        process's view of all devices) make the mesh; with ``materialize=False`` no array is
        allocated: ``state`` holds ShapeDtypeStructs with their shardings, which is what
        ``lower_step`` needs to compile the step ahead of time for devices this machine does
        not have (``vasa_jax.plan``: TPU topologies)."""
        self.task, self.config, self.workdir = task, config, workdir
        self.mesh = parallel.create_mesh(tuple(config.mesh_shape), devices=devices,
                                         num_devices=config.num_devices)
        self.rules = tuple(tuple(r) for r in config.axis_rules)
        self.groups = tuple(task.param_groups)
        self.optimizers = {g: make_optimizer(config.optim, config.train.steps) for g in self.groups}
        self.schedule = lr_schedule(config.optim, config.train.steps)
        self.base_key = jax.random.PRNGKey(config.seed)
        if prepare:
            task.prepare()
        self._build_state(materialize)
        self._train_step = None

    # -- state ---------------------------------------------------------------------------------
    def _make_model(self) -> nnx.Module:
        model = self.task.make_model(nnx.Rngs(self.config.seed))
        self.task.init_model(model)
        return model

    def _split(self, model):
        return models.split_groups(model, self.task.param_groups)

    def _fresh_state(self) -> TrainState:
        _, params, rest = self._split(self._make_model())
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, rest=rest,
            opt_state={g: self.optimizers[g].init(params[g]) for g in self.groups},
            ema={g: jax.tree.map(jnp.copy, params[g]) for g in self.task.ema_groups},
            nonfinite=jnp.zeros((), jnp.int32))

    def _build_state(self, materialize: bool = True) -> None:
        self.graphdef = self._split(nnx.eval_shape(self._make_model))[0]
        abstract = jax.eval_shape(self._fresh_state)
        self.replicated_instead: list = []  # (path, shape, bytes) the mesh could not split
        self.state_shardings = parallel.state_shardings(abstract, self.mesh, self.rules,
                                                        self.replicated_instead)
        if materialize:
            self.state = jax.jit(self._fresh_state, out_shardings=self.state_shardings)()
        else:
            self.state = abstract_like(abstract, self.state_shardings)

    def abstract_state(self) -> Any:
        """The train state's shapes with this trainer's shardings (a restore target)."""
        return abstract_like(self.state, self.state_shardings)

    def model(self, ema: bool = True) -> nnx.Module:
        """The model with the EMA (default) or raw parameters of the current state (sharded on
        the mesh)."""
        params = dict(self.state.params)
        if ema:
            params.update(self.state.ema)
        return nnx.merge(self.graphdef, *[params[g] for g in self.groups], self.state.rest)

    def host_model(self, ema: bool = True) -> nnx.Module:
        """``model`` with its parameters gathered to this host (usable outside the mesh). A
        collective when there are several processes: every process must call it."""
        graphdef, state = nnx.split(self.model(ema=ema))
        if jax.process_count() > 1:
            state = multihost_utils.process_allgather(state, tiled=True)
        else:
            state = jax.device_get(state)
        return nnx.merge(graphdef, jax.tree.map(jnp.asarray, state))

    def _run_hooks(self, step: int, *, evaluate: bool, images: bool, finish: bool,
                   writer) -> dict[str, float]:
        """Gather the EMA model once (every process takes part) and run the task's due hooks
        on process 0; returns the logged evaluation scalars (``eval/...``)."""
        if not (evaluate or images or finish):
            return {}
        model = self.host_model()
        if jax.process_index() != 0:
            return {}
        logged: dict[str, float] = {}
        if evaluate:
            ev = self.task.evaluate(model, step)
            if ev:
                logged = {f"eval/{k}": v for k, v in ev.items()}
                writer.write_scalars(step, logged)
        if images:
            imgs = self.task.images(model, step)
            if imgs:
                writer.write_images(step, imgs)
        if finish:
            self.task.finish(model, self.workdir, step)
        return logged

    def param_shardings_table(self) -> dict[str, str]:
        return parallel.spec_table(self.state_shardings.params)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))

    # -- step ----------------------------------------------------------------------------------
    def _step(self, state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(self.base_key, state.step)
        with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):  # activation constraints
            grads, loss, metrics = self.task.grads(self.graphdef, state.params, state.rest,
                                                   batch, key)
        new_params, new_opt = update_groups(self.optimizers, grads, state.opt_state,
                                            state.params)
        # An update is applied only if the loss, the gradients and the new parameters are all
        # finite; otherwise the whole state except the step counters stays as it was. One
        # `cond` on the flag, not a `where` per leaf: XLA copied the flag's chain of per-leaf
        # reductions into every leaf's select (O(leaves^2) ops; stage 1's compile took minutes).
        ok = jnp.isfinite(loss) & all_finite(grads, new_params)
        new_ema = {g: ema_update(state.ema[g], new_params[g], state.step,
                                 self.config.optim.ema_decay) for g in state.ema}
        params, opt_state, ema = jax.lax.cond(
            ok, lambda: (new_params, new_opt, new_ema),
            lambda: (state.params, state.opt_state, state.ema))
        new_state = TrainState(
            step=state.step + 1, params=params, rest=state.rest, opt_state=opt_state, ema=ema,
            nonfinite=state.nonfinite + (~ok).astype(jnp.int32))
        metrics = dict(metrics)
        metrics.update(loss=loss, grad_norm=optax.global_norm(grads), lr=self.schedule(state.step),
                       skipped=(~ok).astype(jnp.float32),
                       nonfinite_total=new_state.nonfinite.astype(jnp.float32))
        return new_state, metrics

    def _jit_step(self, example_batch: Mapping[str, Any]):
        """The jitted step for batches shaped like ``example_batch`` (arrays or
        ShapeDtypeStructs): state sharded as ``state_shardings`` and donated, the batch split
        over the batch axes, the metrics replicated."""
        batch_sh = parallel.batch_shardings(example_batch, self.mesh)
        return jax.jit(
            self._step, in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
            donate_argnums=(0,))

    def compile_step(self, example_batch: dict[str, np.ndarray]):
        self._train_step = self._jit_step(example_batch)
        return self._train_step

    def lower_step(self, global_batch: Mapping[str, jax.ShapeDtypeStruct]):
        """The step the loop runs, lowered for ``global_batch`` (global shapes; e.g. the task's
        ``batch_spec``) on this trainer's mesh without running it: ``.compile()`` gives the
        executable's ``memory_analysis()`` / ``cost_analysis()``."""
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in global_batch.items()}
        return self._jit_step(batch).lower(self.abstract_state(), batch)

    def train_step(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """One step on this process's rows of the global batch; returns the metrics."""
        batch = self.task.device_batch(host_batch)
        if self._train_step is None:
            self.compile_step(batch)
        self.state, metrics = self._train_step(self.state, parallel.global_batch(batch, self.mesh))
        return metrics

    # -- resume --------------------------------------------------------------------------------
    def _check_resume(self, ckpt: Checkpointer, step: int, allow_config_change: bool) -> None:
        """Compare checkpoint ``step`` with this run before restoring it.

        Other parameter shapes (e.g. a changed model width) always raise ``CheckpointMismatch``
        naming the arrays and both shapes. Other values of fields that change what is trained
        (batch size, dataset, learning rate, ...) raise it with the diff unless
        ``allow_config_change``; fields of ``RESUME_FREE_FIELDS`` (logging, evaluation, mesh,
        checkpoint cadence) may change freely. A larger ``train.steps`` alone extends the run
        freely when the learning-rate schedule does not depend on it (``optim.decay_steps`` >
        0); with ``decay_steps`` = 0 the cosine decay would stretch to the new end and the
        learning rate jump, so it needs the flag too."""
        where = f"checkpoint step {step} in {ckpt.directory}"
        changes = config_differences(ckpt.restore_config(step), self.config)
        shapes = shape_differences(ckpt.stored_shapes(step), self.abstract_state())
        if shapes:
            shapes.sort(key=lambda line: not line.startswith("params/"))
            more = f"\n  ... and {len(shapes) - 8} more arrays" if len(shapes) > 8 else ""
            raise CheckpointMismatch(
                f"Cannot resume from {where}: this config builds other parameter shapes.\n"
                + "\n".join(f"  {line}" for line in shapes[:8]) + more
                + (f"\nThe config differs from the stored one in:\n{_diff_lines(changes)}"
                   if changes else "")
                + "\nResume with the stored values of the model fields, or train the new "
                "shapes in a new workdir.")
        free = {k: v for k, v in changes.items() if _resume_free(k)}
        ruled = {k: v for k, v in changes.items() if k not in free}
        note = ""
        if "train.steps" in ruled:
            old, new = ruled["train.steps"]
            if self.config.optim.decay_steps > 0 and isinstance(old, int) and new > old:
                free["train.steps"] = ruled.pop("train.steps")  # extending the run
            else:
                was = float(lr_schedule(self.config.optim, old)(step)) if isinstance(
                    old, int) else float("nan")
                note = (f"\n(With optim.decay_steps=0, train.steps also sets where the "
                        f"learning-rate decay ends: it moves from step {old} to {new}, and the "
                        f"rate at step {step} from {was:.3g} to {float(self.schedule(step)):.3g}. "
                        f"A run whose optim.decay_steps is fixed can be extended without the "
                        f"flag.)")
        if free:
            logging.info("Resuming %s with changes that do not alter training:\n%s", where,
                         _diff_lines(free))
        if not ruled:
            return
        if not allow_config_change:
            raise CheckpointMismatch(
                f"The config differs from the one stored with {where}:\n{_diff_lines(ruled)}"
                f"{note}\nResuming would continue that run with the new values. Pass "
                f"--allow-config-change (vasa-jax train; --allow_config_change for "
                f"launch/train.py) to accept them, resume with the stored values, or start a "
                f"new workdir.")
        logging.warning("Resuming %s with a changed config (allowed):\n%s%s", where,
                        _diff_lines(ruled), note)

    # -- loop ----------------------------------------------------------------------------------
    def fit(self, progress: bool = False, *, allow_config_change: bool = False
            ) -> dict[str, float]:
        """Train to ``config.train.steps`` (resuming from the workdir's latest readable
        checkpoint, see ``_check_resume`` for ``allow_config_change``).

        ``progress`` shows a progress bar with the latest loss on process 0 (for terminals).
        Raises ``NonFiniteSteps`` after ``train.max_nonfinite_steps`` skipped steps in a row
        (noticed at the next log or checkpoint step; nothing is saved then, so the checkpoints
        hold only states from before the limit was reached) and ``TooManyBadRecords`` when the
        loader skipped too many damaged records (judged at log steps)."""
        cfg, d = self.config.train, self.config.data
        is_main = jax.process_index() == 0
        ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"),
                            max_to_keep=cfg.keep_checkpoints,
                            save_interval_steps=cfg.checkpoint_every,
                            use_async=cfg.async_checkpoints, cleanup_tmp=True)
        start = 0
        if ckpt.latest_step() is not None:  # resume (statistics come from the checkpoint)
            try:
                start, self.state = ckpt.restore(
                    self.abstract_state(), set_aside=True,
                    check=lambda step: self._check_resume(ckpt, step, allow_config_change))
            except BaseException:
                ckpt.close()
                raise
            logging.info("Resumed from step %d in %s", start, ckpt.directory)
        data = iter(self.task.train_loader(start_batch=start))  # one global batch per step
        skips = SkippedRecords(f"{d.dataset}/{d.config} (split {d.split})",
                               d.max_skipped_fraction, d.skip_check_after)
        streak = _NonFiniteStreak()
        writer = metric_writers.create_default_writer(self.workdir, just_logging=not is_main)
        if is_main:
            writer = metric_writers.MultiWriter(
                [writer, JsonlWriter(os.path.join(self.workdir, "metrics.jsonl"))])
        if start == 0:
            writer.write_hparams({"num_params": self.num_params(), "task": self.task.name})
        hooks = [periodic_actions.ReportProgress(num_train_steps=cfg.steps, writer=writer,
                                                 every_steps=cfg.log_every)]
        if is_main and cfg.profile_steps > 0:
            hooks.append(periodic_actions.Profile(num_profile_steps=cfg.profile_steps,
                                                  first_profile=cfg.profile_first_step,
                                                  logdir=self.workdir))
        last: dict[str, float] = {}
        bar = tqdm.tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True,
                        disable=not (progress and is_main))
        t0 = time.time()
        try:
            with _PreemptionNotice() as preemption, bar:
                for step in range(start, cfg.steps):
                    batch = next(data)
                    skips.add(batch)
                    metrics = self.train_step(batch)
                    streak.add(metrics["skipped"])
                    done = step + 1
                    for h in hooks:
                        h(done)
                    bar.update(1)
                    final = done == cfg.steps
                    logged = done % cfg.log_every == 0 or final
                    if logged:
                        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                        counts, used = skips.totals()
                        last.update(skips.metrics(counts, used))
                        writer.write_scalars(done, dict(last))  # the async writer reads it later
                        bar.set_postfix(loss=f"{last['loss']:.4f}")
                        skips.check(counts, used)
                    if logged or final or ckpt.should_save(done):
                        self._stop_on_nonfinite(streak, done, ckpt)
                    saved = ckpt.save(done, self.state, self.config, force=final)
                    due = lambda every: bool(every) and (done % every == 0 or final)  # noqa: E731
                    last.update(self._run_hooks(done, evaluate=due(cfg.eval_every),
                                                images=due(cfg.get("image_every", 0)),
                                                finish=final, writer=writer))
                    if preemption.reached(done, synced=logged):
                        if not saved:  # this step is not on the checkpoint interval
                            self._stop_on_nonfinite(streak, done, ckpt)
                            ckpt.save(done, self.state, self.config, force=True)
                        logging.warning("SIGTERM: saved checkpoint at step %d, exiting.", done)
                        raise Preempted(done)
        finally:  # pending asynchronous saves complete (they hold good states) and logs reach disk
            ckpt.close()
            writer.flush()
            writer.close()
        last["train_seconds"] = time.time() - t0
        return last

    def _stop_on_nonfinite(self, streak: _NonFiniteStreak, step: int, ckpt: Checkpointer
                           ) -> None:
        """Raise ``NonFiniteSteps`` if ``train.max_nonfinite_steps`` steps in a row up to
        ``step`` were skipped (the caller then saves nothing)."""
        limit = self.config.train.max_nonfinite_steps
        longest, first = streak.longest_since(step)
        if not limit or longest < limit:
            return
        ckpt.wait()
        latest = ckpt.latest_step()
        kept = (f"The latest checkpoint, step {latest} in {ckpt.directory}, holds a finite state; "
                f"the run resumes from it." if latest is not None else "No checkpoint was saved.")
        raise NonFiniteSteps(
            f"Stopped at step {step}: {longest} training steps in a row from step {first} had a "
            f"non-finite loss, gradients or update (train.max_nonfinite_steps={limit}). Each was "
            f"skipped, so the parameters are those of step {first - 1}, and nothing was saved "
            f"once the limit was reached. {kept} Usual causes: a learning rate too high "
            f"(optim.lr), too little clipping (optim.clip_norm), NaN/inf in the data, an "
            f"unstable loss. Fix the cause and resume, or raise train.max_nonfinite_steps to "
            f"wait longer.")
