"""The trainer both stages use.

Mesh from the config (axes ``('data', 'fsdp', 'tensor')``, -1 fills), logical-axis rules per
config, shape-first sharded initialisation of the whole train state, ONE ``jax.jit`` train step
with ``in_shardings``/``out_shardings`` and donation, AdamW with warmup + cosine and clipping per
parameter group, an EMA of the parameters, a non-finite guard (the update is skipped and counted),
clu metric writers (TensorBoard + log + ``metrics.jsonl``; only process 0 writes),
``ReportProgress``, a profiler hook, periodic evaluation, orbax checkpoints of state + data
iterator + config, and a SIGTERM handler that saves before exiting.

Randomness: the step key is ``fold_in(PRNGKey(seed), step)`` and tasks derive per-example keys
from each example's global stream position, so a resumed run repeats the uninterrupted one and
the result does not depend on the number of processes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.experimental import multihost_utils

from vasa_jax import models, parallel
from vasa_jax.checkpoint import Checkpointer, abstract_like
from vasa_jax.train.state import (TrainState, all_finite, ema_update, lr_schedule,
                                  make_optimizer, update_groups)
from vasa_jax.train.task import Task


class Preempted(SystemExit):
    """Raised after a SIGTERM was handled: a checkpoint was saved at ``step``."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


class _SigtermFlag:
    """Records SIGTERM instead of dying; the loop saves and exits at the next step."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler (e.g. inside a notebook thread)
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def any_process(self) -> bool:
        """True if any process got SIGTERM (all processes must agree to save together)."""
        if jax.process_count() == 1:
            return self.raised
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

    def __init__(self, task: Task, config, workdir: str, *, prepare: bool = True):
        """``prepare=False`` skips the task's host-side preparation (dataset statistics), for a
        trainer whose state will be restored from a checkpoint."""
        self.task, self.config, self.workdir = task, config, workdir
        self.mesh = parallel.create_mesh(tuple(config.mesh_shape), num_devices=config.num_devices)
        self.rules = tuple(tuple(r) for r in config.axis_rules)
        self.groups = tuple(task.param_groups)
        self.optimizers = {g: make_optimizer(config.optim, config.train.steps) for g in self.groups}
        self.schedule = lr_schedule(config.optim, config.train.steps)
        self.base_key = jax.random.PRNGKey(config.seed)
        if prepare:
            task.prepare()
        self._build_state()
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

    def _build_state(self) -> None:
        self.graphdef = self._split(nnx.eval_shape(self._make_model))[0]
        abstract = jax.eval_shape(self._fresh_state)
        self.state_shardings = parallel.state_shardings(abstract, self.mesh, self.rules)
        self.state = jax.jit(self._fresh_state, out_shardings=self.state_shardings)()

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
        grads, loss, metrics = self.task.grads(self.graphdef, state.params, state.rest, batch, key)
        new_params, new_opt = update_groups(self.optimizers, grads, state.opt_state,
                                            state.params)
        ok = jnp.isfinite(loss) & all_finite(grads)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        params = keep(new_params, state.params)
        ema = {g: keep(ema_update(state.ema[g], params[g], state.step, self.config.optim.ema_decay),
                       state.ema[g]) for g in state.ema}
        new_state = TrainState(
            step=state.step + 1, params=params, rest=state.rest,
            opt_state=keep(new_opt, state.opt_state), ema=ema,
            nonfinite=state.nonfinite + (~ok).astype(jnp.int32))
        metrics = dict(metrics)
        metrics.update(loss=loss, grad_norm=optax.global_norm(grads), lr=self.schedule(state.step),
                       skipped=(~ok).astype(jnp.float32),
                       nonfinite_total=new_state.nonfinite.astype(jnp.float32))
        return new_state, metrics

    def compile_step(self, example_batch: dict[str, np.ndarray]):
        batch_sh = parallel.batch_shardings(example_batch, self.mesh)
        self._train_step = jax.jit(
            self._step, in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
            donate_argnums=(0,))
        return self._train_step

    def train_step(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """One step on this process's rows of the global batch; returns the metrics."""
        batch = self.task.device_batch(host_batch)
        if self._train_step is None:
            self.compile_step(batch)
        self.state, metrics = self._train_step(self.state, parallel.global_batch(batch, self.mesh))
        return metrics

    # -- loop ----------------------------------------------------------------------------------
    def fit(self, progress: bool = False) -> dict[str, float]:
        """Train to ``config.train.steps`` (resuming from the workdir's latest checkpoint).

        ``progress`` shows a progress bar with the latest loss on process 0 (for terminals)."""
        cfg = self.config.train
        is_main = jax.process_index() == 0
        ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"),
                            max_to_keep=cfg.keep_checkpoints,
                            save_interval_steps=cfg.checkpoint_every,
                            use_async=cfg.async_checkpoints)
        data = iter(self.task.train_loader())
        start = 0
        if ckpt.latest_step() is not None:  # resume (statistics come from the checkpoint)
            start, self.state = ckpt.restore(self.abstract_state(), data)
            logging.info("Resumed from step %d in %s", start, ckpt.directory)
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
        with _SigtermFlag() as sigterm, bar:
            for step in range(start, cfg.steps):
                metrics = self.train_step(next(data))
                done = step + 1
                for h in hooks:
                    h(done)
                bar.update(1)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    writer.write_scalars(done, dict(last))  # the async writer reads it later
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                saved = ckpt.save(done, self.state, data, self.config, force=done == cfg.steps)
                due = lambda every: bool(every) and (done % every == 0 or done == cfg.steps)  # noqa: E731
                last.update(self._run_hooks(done, evaluate=due(cfg.eval_every),
                                            images=due(cfg.get("image_every", 0)),
                                            finish=done == cfg.steps, writer=writer))
                if sigterm.any_process():
                    if not saved:  # this step is not on the checkpoint interval
                        ckpt.save(done, self.state, data, self.config, force=True)
                    ckpt.close()
                    writer.flush()
                    logging.warning("SIGTERM: saved checkpoint at step %d, exiting.", done)
                    raise Preempted(done)
        ckpt.close()
        writer.flush()
        writer.close()
        last["train_seconds"] = time.time() - t0
        return last
