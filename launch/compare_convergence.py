"""Train our JAX model and the PyTorch baseline side by side and compare their loss curves.

  python launch/compare_convergence.py --stage=motion --variant=synthtalk --steps=500 \\
      --out=runs/compare/motion
  python launch/compare_convergence.py --stage=latent --variant=synthtalk64 --steps=300 \\
      --out=runs/compare/latent
  python launch/compare_convergence.py --config=configs/motion.py:synthtalk \\
      --config.optim.decay_steps=500 --steps=500 --out=runs/compare/motion_short
  # our JAX run against someone else's PyTorch run (TensorBoard event file/dir, or CSV):
  python launch/compare_convergence.py --variant=synthtalk --steps=500 --out=runs/compare/ext \\
      --external_log=their_run/ --external_tag=train/loss

Both frameworks start from the same weights (the JAX model initialised from ``config.seed``,
converted with ``vasa_jax.interop``), see the same batches in the same order (each batch is
drawn once from our grain loader, with the dataset statistics the trainer uses, and the same
NumPy arrays go to both), the same per-step randomness (for stage 2: diffusion timesteps, noise
and condition drops, drawn once per step with the trainer's keys ``fold_in(PRNGKey(seed), step)``
and per-example ``fold_in(., stream position)``; stage 1 has none: its objective is
deterministic given the batch), and the same optimiser (ours:
``vasa_jax.train.state.make_optimizer``, one per parameter group as the trainer has; torch:
``baselines.torch_baseline.optim.AdamWLikeOptax``, its twin, over the same groups, with weight
decay on the same tensors). The JAX side runs our loss and optimisers in one jitted step; it
does not use the EMA or the non-finite guard of the trainer (a non-finite loss stops the run).

Stages:
  motion  stage 2, MotionDiT: ``denoising_loss``; torch
          ``baselines/torch_baseline/train_motion.py``.
  latent  stage 1, FaceLatentModel and its discriminator: ``LatentTask.grads`` (generator loss
          and, with GAN terms, the discriminator's hinge loss), two optimisers (generator,
          discriminator; ``LatentTask.param_groups``); torch
          ``baselines/torch_baseline/face_latent.py`` and ``latent_losses.stage1_losses``.
          ``loss`` is the generator's total; ``d_loss``, ``d_real``/``d_fake``, each term (l1,
          motion_l1, perceptual, g_adv, feature_matching, consist, cross_id), psnr and the
          per-group gradient norms are logged too. A config without GAN terms still gives the
          discriminator its zero-gradient (decay-only) update on both sides, as the trainer
          does.

Outputs in --out (all moved into place only when the run has finished; a failed run leaves
nothing there):
  jax/, torch/    TensorBoard logs: loss (and its parts), grad_norm, lr, step_seconds per step;
                  the step of a loss is the number of updates after it (the trainer's rule)
  curves.png      top: both loss curves (raw faint, smoothed); bottom: |relative difference|
                  of the smoothed curves on a log axis, with the tolerance line
  compare.json    steps to reach --levels, final smoothed-loss ratio (JAX / torch), largest
                  relative divergence of the smoothed curves after --burn_in, within_tolerance,
                  wall times, the config and seeds, the per-step losses
With --external_log the torch side is not run: ``torch/`` is absent and the external curve takes
its place ("external" in compare.json).

A stage is a small adapter (``Stage``: build both models from one set of weights, draw batches and
randomness, one update per framework); ``motion`` (stage 2) and ``latent`` (stage 1) are
implemented.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Mapping

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vasa_jax.eval import convergence  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (path:variant); overrides --stage/--variant.", lock_config=False)
_STAGE = flags.DEFINE_string("stage", "motion", "Stage to compare (configs/<stage>.py).")
_VARIANT = flags.DEFINE_string("variant", "synthtalk", "Config variant of --stage.")
_STEPS = flags.DEFINE_integer("steps", 500, "Updates per framework.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "TFDS data dir (default: the config's, else $VASA_JAX_DATA_DIR).")
_EXTERNAL = flags.DEFINE_string(
    "external_log", None, "Compare against this PyTorch run instead of running ours: a "
    "TensorBoard event file or run directory, or a .csv file.")
_EXTERNAL_TAG = flags.DEFINE_string("external_tag", "loss",
                                    "Scalar tag (TensorBoard) or value column (CSV) of the loss.")
_EXTERNAL_STEP_COL = flags.DEFINE_string("external_step_column", "step",
                                         "Step column of an external CSV log.")
_EXTERNAL_OFFSET = flags.DEFINE_integer(
    "external_step_offset", 0, "Added to the external log's steps (e.g. 1 if it logs the loss "
    "of update s at step s-1; ours logs it at s).")
_LEVELS = flags.DEFINE_list("levels", ["0.6", "0.4", "0.3"],
                            "Loss levels for steps-to-level: fractions of the initial JAX loss, "
                            "or absolute values with --absolute_levels.")
_ABSOLUTE = flags.DEFINE_bool("absolute_levels", False, "--levels are absolute loss values.")
_SMOOTHING = flags.DEFINE_float("smoothing", 0.9, "EMA weight per step of the smoothing "
                                "(TensorBoard's slider; 0 = raw).")
_BURN_IN = flags.DEFINE_integer("burn_in", 10, "Steps at the start not counted in the divergence.")
_TOLERANCE = flags.DEFINE_float("tolerance", 0.05, "Allowed largest relative divergence of the "
                                "smoothed curves.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 25, "Progress lines every this many steps.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: default).")


class CompareError(RuntimeError):
    """A user-fixable problem (bad flags, missing dataset, unreadable log)."""


# -- stages ------------------------------------------------------------------------------------

class Stage:
    """What a stage contributes. Call order: ``prepare``, ``init_jax``, ``torch_weights``,
    ``init_torch`` (unless an external log replaces the torch run), then per step
    ``next_batch``, ``draws``, ``jax_step``, ``torch_step``."""

    name = "stage"

    def __init__(self, config):
        self.config = config

    def prepare(self) -> None:
        """Host-side preparation (dataset statistics) and the data iterator."""
        raise NotImplementedError

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next training batch (NumPy, leading batch dim), fed unchanged to both sides."""
        raise NotImplementedError

    def draws(self, step: int, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All randomness of update ``step`` as NumPy arrays, fed unchanged to both sides."""
        raise NotImplementedError

    def init_jax(self) -> None:
        raise NotImplementedError

    def torch_weights(self) -> dict[str, np.ndarray]:
        """The JAX model's initial weights in torch names."""
        raise NotImplementedError

    def init_torch(self, weights: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def jax_step(self, batch, draws) -> dict[str, float]:
        """One update; returns at least ``loss`` (before the update); values are host floats."""
        raise NotImplementedError

    def torch_step(self, batch, draws) -> dict[str, float]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release the data iterator (stops loader worker processes while Python still runs)."""


class MotionStage(Stage):
    """Stage 2: MotionDiT and its x0 diffusion loss (``vasa_jax.train.motion_task``)."""

    name = "motion"

    def __init__(self, config):
        super().__init__(config)
        from vasa_jax.train.motion_task import MotionTask

        self.task = MotionTask(config)

    def prepare(self) -> None:
        self.task.prepare()  # dataset statistics, as the trainer computes them
        self._data = iter(self.task.train_loader())

    def next_batch(self):
        return self.task.device_batch(next(self._data))

    def close(self):
        self._data = None  # the last reference: grain's worker pool exits with it
        gc.collect()

    def init_jax(self) -> None:
        import jax
        import optax
        from flax import nnx

        from vasa_jax.motion.objective import denoising_loss
        from vasa_jax.train.state import lr_schedule, make_optimizer

        cfg = self.config
        model = self.task.make_model(nnx.Rngs(cfg.seed))  # the trainer's initialisation
        self.task.init_model(model)
        self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.optimizer = make_optimizer(cfg.optim, cfg.train.steps)
        self.opt_state = self.optimizer.init(self.params)
        self.lr = lr_schedule(cfg.optim, cfg.train.steps)
        self.count = 0
        schedule, vw = self.task.schedule, float(cfg.diffusion.velocity_weight)
        graphdef, rest, optimizer = self.graphdef, self.rest, self.optimizer

        def step(params, opt_state, batch, t, noise, drops):
            def loss_fn(p):
                return denoising_loss(nnx.merge(graphdef, p, rest), schedule, batch, t, noise,
                                      drops, vw)

            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, dict(aux, loss=loss, grad_norm=optax.global_norm(grads))

        self._step = jax.jit(step, donate_argnums=(0, 1))

        from vasa_jax.motion.objective import draw_randomness

        window, motion_dim = cfg.model.window, cfg.model.motion_dim
        base_key = jax.random.PRNGKey(cfg.seed)

        def draw(step, pos):  # the trainer's step key, as MotionTask.loss receives it
            return draw_randomness(schedule, cfg.diffusion, jax.random.fold_in(base_key, step),
                                   pos, window, motion_dim)

        self._draw = jax.jit(draw)

    def draws(self, step, batch):
        import jax

        t, noise, drops = jax.device_get(self._draw(np.int32(step), batch["pos"]))
        out = {"t": np.asarray(t), "noise": np.asarray(noise)}
        out.update({"drop/" + k: np.asarray(v) for k, v in drops.items()})
        return out

    @staticmethod
    def _split_draws(draws):
        return draws["t"], draws["noise"], {k[5:]: v for k, v in draws.items()
                                            if k.startswith("drop/")}

    def jax_step(self, batch, draws):
        import jax

        t, noise, drops = self._split_draws(draws)
        lr = float(self.lr(self.count))
        self.params, self.opt_state, m = self._step(self.params, self.opt_state, batch, t, noise,
                                                    drops)
        self.count += 1
        out = {k: float(v) for k, v in jax.device_get(m).items()}
        out["lr"] = lr
        return out

    def torch_weights(self):
        from flax import nnx

        from vasa_jax.interop.motion_dit import flax_to_torch

        return flax_to_torch(nnx.state(nnx.merge(self.graphdef, self.params, self.rest)))

    def decay_names(self) -> set[str]:
        """Torch names of the parameters our optax mask decays (ndim >= 2 in Flax layout)."""
        import jax
        import jax.numpy as jnp

        from vasa_jax.interop.motion_dit import flax_to_torch

        flags_ = jax.tree.map(lambda x: jnp.full(x.shape, float(x.ndim >= 2), jnp.float32),
                              self.params)
        return {k for k, v in flax_to_torch(flags_).items() if v.size and v.flat[0] == 1.0}

    def init_torch(self, weights):
        from baselines.torch_baseline.train_motion import MotionTrainer

        self.torch = MotionTrainer(self.config, weights, decay_names=self.decay_names())
        got = {n for n, _ in self.torch.model.named_parameters()}
        want = set(weights) - {n for n, _ in self.torch.model.named_buffers()}
        if got != want:
            raise CompareError(f"torch parameters differ from the converted JAX ones: "
                               f"{sorted(got ^ want)}")

    def torch_step(self, batch, draws):
        t, noise, drops = self._split_draws(draws)
        return self.torch.step(batch, t, noise, drops)

    def describe(self):
        import jax

        return {"num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params))),
                "velocity_weight": float(self.config.diffusion.velocity_weight),
                "weight_decay_params_torch": sorted(self.decay_names())}


class LatentStage(Stage):
    """Stage 1: FaceLatentModel, both players (``vasa_jax.train.latent_task``). The objective
    is deterministic given the batch (no per-step draws). Logged ``loss``: the generator's
    total; also ``d_loss`` and every term."""

    name = "latent"

    def __init__(self, config):
        super().__init__(config)
        from vasa_jax.train.latent_task import LatentTask

        self.task = LatentTask(config)
        self.groups = tuple(self.task.param_groups)  # ("discriminator", "generator")

    def prepare(self) -> None:
        self.task.prepare()
        self._data = iter(self.task.train_loader())

    def next_batch(self):
        return self.task.device_batch(next(self._data))

    def close(self):
        self._data = None
        gc.collect()

    def draws(self, step, batch):
        return {}

    def init_jax(self) -> None:
        import jax
        import optax
        from flax import nnx

        from vasa_jax.train.state import lr_schedule, make_optimizer, update_groups

        cfg, task, groups = self.config, self.task, self.groups
        filters = tuple(task.param_groups.values())

        def make():  # the trainer's initialisation (Trainer._make_model), jitted as it does
            model = task.make_model(nnx.Rngs(cfg.seed))
            task.init_model(model)
            return model

        self.graphdef = nnx.split(nnx.eval_shape(make), *filters, ...)[0]
        *split, self.rest = jax.jit(lambda: nnx.split(make(), *filters, ...)[1:])()
        self.params = dict(zip(groups, split))
        self.optimizers = {g: make_optimizer(cfg.optim, cfg.train.steps) for g in groups}
        self.opt_state = {g: self.optimizers[g].init(self.params[g]) for g in groups}
        self.lr = lr_schedule(cfg.optim, cfg.train.steps)
        self.count = 0
        graphdef, rest, optimizers = self.graphdef, self.rest, self.optimizers

        def step(params, opt_state, batch):  # Trainer._step without EMA and non-finite guard
            grads, loss, metrics = task.grads(graphdef, params, rest, batch, None)
            new_params, new_opt = update_groups(optimizers, grads, opt_state, params)
            out = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
            out.update({f"grad_norm/{g}": optax.global_norm(grads[g]) for g in groups})
            return new_params, new_opt, out

        self._step = jax.jit(step, donate_argnums=(0, 1))

    def jax_step(self, batch, draws):
        import jax

        lr = float(self.lr(self.count))
        self.params, self.opt_state, m = self._step(self.params, self.opt_state, batch)
        self.count += 1
        out = {k: float(v) for k, v in jax.device_get(m).items()}
        out["lr"] = lr
        return out

    def torch_weights(self):
        from flax import nnx

        from vasa_jax.interop.face_latent import flax_to_torch

        model = nnx.merge(self.graphdef, *[self.params[g] for g in self.groups], self.rest)
        return flax_to_torch(nnx.state(model))

    def decay_names(self) -> dict[str, set[str]]:
        """Per group, the torch names of the parameters our optax mask decays (ndim >= 2 in
        Flax layout)."""
        import jax
        import jax.numpy as jnp

        from vasa_jax.interop.face_latent import flax_to_torch

        out = {}
        for g in self.groups:
            flags_ = jax.tree.map(lambda x: jnp.full(x.shape, float(x.ndim >= 2), jnp.float32),
                                  self.params[g])
            out[g] = {k for k, v in flax_to_torch(flags_).items() if v.size and v.flat[0] == 1.0}
        return out

    def group_names(self) -> dict[str, set[str]]:
        """Per group, the torch names of its parameters."""
        from vasa_jax.interop.face_latent import flax_to_torch

        return {g: set(flax_to_torch(self.params[g])) for g in self.groups}

    def init_torch(self, weights):
        import torch

        from baselines.torch_baseline import latent_losses as tl
        from baselines.torch_baseline.face_latent import make_face_latent_model
        from baselines.torch_baseline.optim import AdamWLikeOptax

        cfg = self.config
        model = make_face_latent_model(cfg.model)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                              strict=True)
        model.train()
        named = dict(model.named_parameters())
        names = self.group_names()
        if set(named) != set().union(*names.values()):
            raise CompareError(f"torch parameters differ from the converted JAX ones: "
                               f"{sorted(set(named) ^ set().union(*names.values()))}")
        if names["discriminator"] != {n for n in named if n.startswith("discriminator.")}:
            raise CompareError("the discriminator group differs between the frameworks")
        decay = self.decay_names()
        self.torch_model = model
        self.torch_groups = {g: [named[n] for n in sorted(names[g])] for g in self.groups}
        self.torch_optimizers = {
            g: AdamWLikeOptax([(n, named[n]) for n in sorted(names[g])], cfg.optim,
                              cfg.train.steps, decay_names=decay[g]) for g in self.groups}
        lc = cfg.loss
        self.vgg = tl.VGG16Features(lc.perceptual_layers) if lc.perceptual else None

    def torch_step(self, batch, draws):
        import torch

        from baselines.torch_baseline import latent_losses as tl

        for opt in self.torch_optimizers.values():
            opt.zero_grad()
        frames = torch.from_numpy(np.array(batch["frames"]))
        g_total, d_total, metrics = tl.stage1_losses(self.torch_model, frames, self.config.loss,
                                                     self.vgg)
        g_total.backward()
        if d_total is not None:
            d_total.backward()
        for g, params in self.torch_groups.items():  # as ours: every parameter gets a gradient
            for p in params:  # (zero where the loss does not reach it), so decay applies
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        out = {k: float(v) for k, v in metrics.items()}
        norms = {g: self.torch_optimizers[g].step() for g in self.groups}
        out.update({f"grad_norm/{g}": n["grad_norm"] for g, n in norms.items()})
        out["grad_norm"] = float(np.sqrt(sum(n["grad_norm"] ** 2 for n in norms.values())))
        out["lr"] = norms["generator"]["lr"]
        out["loss"] = float(g_total.detach())
        return out

    def describe(self):
        import jax

        decay = self.decay_names()
        return {"num_params": {g: int(sum(np.prod(x.shape) for x in jax.tree.leaves(p)))
                               for g, p in self.params.items()},
                "discriminator_trained": bool(self.config.loss.adversarial
                                              or self.config.loss.feature_matching),
                "weight_decay_params_torch": {g: sorted(v) for g, v in decay.items()}}


STAGES: dict[str, type[Stage]] = {"motion": MotionStage, "latent": LatentStage}


# -- the run -----------------------------------------------------------------------------------

def load_config(stage: str, variant: str):
    import importlib

    try:
        module = importlib.import_module(f"configs.{stage}")
    except ModuleNotFoundError as e:
        raise CompareError(f"No config module configs/{stage}.py.") from e
    try:
        return module.get_config(variant)
    except ValueError as e:
        raise CompareError(str(e)) from e


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("jax", "flax", "optax", "torch", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def _writer(logdir: str):
    from clu import metric_writers

    return metric_writers.SummaryWriter(logdir)


def run(config, out: str, *, steps: int, external_log: str | None = None,
        external_tag: str = "loss", external_step_column: str = "step",
        external_step_offset: int = 0, levels=(0.6, 0.4, 0.3), absolute_levels: bool = False,
        smoothing: float = 0.9, burn_in: int = 10, tolerance: float = 0.05,
        log_every: int = 25, torch_threads: int = 0) -> dict[str, Any]:
    """Run the comparison for ``config`` (its ``task`` names the stage) and write the outputs
    into ``out``; returns the compare.json contents."""
    stage_name = config.task
    if stage_name not in STAGES:
        raise CompareError(f"Stage {stage_name!r} has no comparison adapter yet; implemented: "
                           f"{sorted(STAGES)}.")
    if steps <= burn_in:
        raise CompareError(f"--steps ({steps}) must exceed --burn_in ({burn_in}): the divergence "
                           "ignores the first burn_in steps.")
    if not 0.0 <= smoothing < 1.0:
        raise CompareError(f"--smoothing must be in [0, 1); got {smoothing}.")
    if not tolerance > 0:
        raise CompareError(f"--tolerance must be positive; got {tolerance}.")
    levels = [float(x) for x in levels]
    external = None
    if external_log:  # read it first: a bad log fails before any training
        c = convergence.read_log(external_log, external_tag, external_step_column, "external")
        external = convergence.make_curve(c.steps + external_step_offset, c.values, "external")
    from data_pipeline.loader import dataset_dir

    d = config.data
    dataset_dir(d.dataset, d.config, d.data_dir or None)  # DatasetNotFoundError says what to do

    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=out)
    stage = None
    ok = False
    try:
        stage = STAGES[stage_name](config)
        summary = _run(config, staging, stage, steps=steps,
                       external=external, levels=levels, absolute_levels=absolute_levels,
                       smoothing=smoothing, burn_in=burn_in, tolerance=tolerance,
                       log_every=log_every, torch_threads=torch_threads)
        summary["external_log"] = (None if external is None else
                                   {"path": os.path.abspath(external_log), "tag": external_tag,
                                    "step_offset": external_step_offset})
        convergence.write_json(os.path.join(staging, "compare.json"), summary)
        if os.path.exists(os.path.join(out, "compare.json")):
            os.remove(os.path.join(out, "compare.json"))  # never beside the new logs
        for name in ("jax", "torch", "curves.png", "compare.json"):  # the JSON last
            src, dst = os.path.join(staging, name), os.path.join(out, name)
            if os.path.isdir(dst):
                shutil.rmtree(dst)  # also a stale torch/ when an external log replaced it
            if os.path.exists(src):
                os.replace(src, dst)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created and not os.listdir(out):
            os.rmdir(out)
        if stage is not None:
            stage.close()
    return summary


def _run(config, staging: str, stage: Stage, *, steps, external, levels, absolute_levels,
         smoothing, burn_in, tolerance, log_every, torch_threads) -> dict[str, Any]:
    sides = ["jax"] if external is not None else ["jax", "torch"]
    if "torch" in sides:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
    t0 = time.time()
    stage.prepare()
    stage.init_jax()
    weights = stage.torch_weights()
    if "torch" in sides:
        stage.init_torch(weights)
    setup_seconds = time.time() - t0
    writers = {s: _writer(os.path.join(staging, s)) for s in sides}
    history = {s: {"loss": [], "seconds": []} for s in sides}
    try:
        for step in range(steps):
            batch = stage.next_batch()
            draws = stage.draws(step, batch)
            row = {}
            for s in sides:
                t = time.perf_counter()
                m = stage.jax_step(batch, draws) if s == "jax" else stage.torch_step(batch, draws)
                dt = time.perf_counter() - t
                if not np.isfinite(m["loss"]):
                    raise FloatingPointError(f"{s} loss is not finite at step {step}: "
                                             f"{m['loss']}.")
                history[s]["loss"].append(m["loss"])
                history[s]["seconds"].append(dt)
                writers[s].write_scalars(step + 1, {**m, "step_seconds": dt})
                row[s] = m["loss"]
            if log_every and ((step + 1) % log_every == 0 or step == 0 or step + 1 == steps):
                msg = " ".join(f"{s}={v:.5f}" for s, v in row.items())
                if len(row) == 2:
                    msg += f" rel_diff={(row['jax'] - row['torch']) / row['torch']:+.2e}"
                logging.info("step %d/%d %s", step + 1, steps, msg)
    finally:
        for w in writers.values():
            w.close()

    step_axis = np.arange(1, steps + 1)
    ours = convergence.make_curve(step_axis, history["jax"]["loss"], "jax")
    ref = (external if external is not None else
           convergence.make_curve(step_axis, history["torch"]["loss"], "torch"))
    summary = convergence.compare(ours, ref, beta=smoothing, burn_in=burn_in, levels=levels,
                                  relative_levels=not absolute_levels, tolerance=tolerance)
    title = (f"{config.task}:{config.get('variant', '')} — JAX vs "
             f"{'external PyTorch log' if external is not None else 'PyTorch'}, "
             f"{steps} steps, batch {config.data.batch_size}")
    convergence.plot_curves(os.path.join(staging, "curves.png"), ours, ref, summary, title)

    def timing(s):
        sec = np.asarray(history[s]["seconds"])
        return {"total_seconds": float(sec.sum()), "first_step_seconds": float(sec[0]),
                "mean_step_seconds_after_first": float(sec[1:].mean())}

    raw = {"steps": step_axis.tolist(), "jax": history["jax"]["loss"]}
    if "torch" in sides:
        raw["torch"] = history["torch"]["loss"]
        diff = np.abs(np.asarray(raw["jax"]) - np.asarray(raw["torch"]))
        summary["raw_loss_abs_difference"] = {"step_1": float(diff[0]),
                                              "max_first_10": float(diff[:10].max()),
                                              "max": float(diff.max())}
    else:
        raw["external"] = {"steps": ref.steps.tolist(), "loss": ref.values.tolist()}
    summary.update({
        "stage": config.task,
        "variant": config.get("variant", ""),
        "steps": steps,
        "reference": "external" if external is not None else "torch",
        "seeds": {"config.seed": int(config.seed),
                  "meaning": "JAX model init (nnx.Rngs(seed)); data order (grain seed); per-step "
                             "draws (stage 2 only) from fold_in(PRNGKey(seed), step) and the "
                             "example's stream position"},
        "wall_time": {**{s: timing(s) for s in sides}, "setup_seconds": setup_seconds},
        "stage_info": stage.describe(),
        "versions": _versions(),
        "command": sys.argv,
        "config": config.to_dict(),
        "curves": raw,
    })
    return summary


# -- command line ------------------------------------------------------------------------------

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _OUT.value:
        raise app.UsageError("--out is required.")
    try:
        config = _CONFIG.value if _CONFIG.value is not None else load_config(_STAGE.value,
                                                                             _VARIANT.value)
        if _DATA_DIR.value:
            config.data.data_dir = _DATA_DIR.value
        try:
            levels = [float(x) for x in _LEVELS.value]
        except ValueError as e:
            raise CompareError(f"--levels must be numbers; got {_LEVELS.value}.") from e
        summary = run(config, _OUT.value, steps=_STEPS.value, external_log=_EXTERNAL.value,
                      external_tag=_EXTERNAL_TAG.value,
                      external_step_column=_EXTERNAL_STEP_COL.value,
                      external_step_offset=_EXTERNAL_OFFSET.value,
                      levels=levels, absolute_levels=_ABSOLUTE.value,
                      smoothing=_SMOOTHING.value, burn_in=_BURN_IN.value,
                      tolerance=_TOLERANCE.value, log_every=_LOG_EVERY.value,
                      torch_threads=_TORCH_THREADS.value)
    except (CompareError, convergence.LogError, FileNotFoundError, FloatingPointError) as e:
        # FileNotFoundError: data_pipeline.loader.DatasetNotFoundError says what to build where
        sys.exit(f"compare_convergence: error: {e}")
    div = summary["divergence"]
    print(f"max smoothed divergence {100 * div['max_abs']:.3g}% at step {div['at_step']} "
          f"(tolerance {100 * summary['tolerance']:g}%: "
          f"{'OK' if summary['within_tolerance'] else 'EXCEEDED'}); final ratio jax/"
          f"{summary['reference']} {summary['final_ratio']:.4f}; wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
