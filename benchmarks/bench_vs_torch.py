"""Train-step speed, JAX (jit) against the PyTorch baseline (eager), on this CPU with equal
thread counts.

  python benchmarks/bench_vs_torch.py [--case motion_paper_b8] [--threads 2] [--warmup 3]
      [--steps 10] [--profile auto|always|never] [--out benchmarks/results/vs_torch.json]
  python benchmarks/bench_vs_torch.py --case latent_synthtalk64 --steps 3 --profile never \\
      --out /tmp/vs_torch_latent.json

Cases (``--case`` may be repeated; default: every case but the tiny ``*_test`` ones):
  motion_paper_b8     stage 2, the ``configs/motion.py:paper`` MotionDiT (8 x 512, 8 heads,
                      W=50, K=10), batch 8
  latent_synthtalk64  stage 1, ``configs/latent.py:synthtalk64`` FaceLatentModel, its batch
                      (8 pairs of 64 px frames), its loss (L1, motion-weighted L1, VGG16 to
                      relu2_2, l_consist and l_cross_id on a quarter of the rows; no GAN terms)
  motion_test         the ``test`` MotionDiT, batch 8 (smoke tests)
  latent_test         the ``test`` FaceLatentModel, batch 8, GAN terms on (smoke tests)

A train step is the whole update on both sides, on one fixed batch with fixed timesteps, noise
and condition drops (drawn once, shared by both frameworks, as are the initial weights): forward,
the stage's real loss, backward, global-norm gradient clipping and AdamW (decay on matrices
only), with the config's learning-rate schedule. Stage 1: ``LatentTask.grads`` (generator loss,
and the discriminator's hinge loss when the config has GAN terms) and one clipped AdamW per
parameter group (generator, discriminator), as our trainer; torch: ``stage1_losses``, the two
backward passes, ``clip_grad_norm_`` and AdamW per group (without GAN terms the discriminator
gets zero gradients on both sides, so both apply its decay-only update); the batch is one fixed
random uint8 (b, 2, 64, 64, 3) frames array and the shared weights are deterministic random
values (``vasa_jax.interop.face_latent.randomize``), not the trainer's initialiser.
JAX: one ``jax.jit`` step whose train state
(parameters + optax state) is donated, compiled ahead of time (``lower().compile()``, timed
apart from the steps, with the persistent compilation cache off unless ``--jax-cache DIR``,
which the smoke tests use); each step is timed to
``block_until_ready`` of everything it returns. PyTorch: ``model.train()``, ``zero_grad``,
``backward``, ``clip_grad_norm_``, ``AdamW(fused=True).step`` (``--torch-adamw``; on the paper
MotionDiT, 1 thread, the fused update takes ~18 ms, foreach ~63 ms, torch's default loop
~106 ms), float32.

Threads: each framework runs in its own worker process (so neither one's idle pools compete
with the other's), started with OMP/MKL/OpenBLAS_NUM_THREADS=N. JAX's CPU client sizes its
intra-op (Eigen) thread pool from the ``PJRT_NPROC`` environment variable (XLA's
``intra_op_parallelism_threads`` token in XLA_FLAGS has no effect on the PJRT client, and
``--xla_cpu_multi_thread_eigen`` is left at its default, true); torch gets
``set_num_threads(N)`` and ``set_num_interop_threads(1)``. ``--pin`` additionally restricts
both workers to CPUs 0..N-1. The JSON records the settings and the measured CPU utilisation
(process CPU time / wall time over the timed steps), which shows the threads really used; a
case whose worker kept fewer than 0.8 x N CPUs busy is listed under ``contended`` (other load
on the machine: its figures are not to be quoted).

Output (printed table, and JSON written atomically): per case and framework the median step
time with its inter-quartile range, the compile time (JAX) or first-step time (torch), the
parameter count and the loss of every step (the two frameworks must agree: a check that they
time the same computation; ``loss_step0_rel_diff``, before any update, is warned about above
1e-4); ``speedup`` = torch / JAX median step time and ``jax_over_torch``
its inverse. When JAX is not at least 2x faster (``--profile auto``), both sides are profiled:
time split into forward / forward+backward / optimiser and attention / MLP blocks, torch's top
operators by self CPU time, XLA's top thunks from a ``jax.profiler`` trace, XLA's FLOP count
against the measured matmul peak; a short explanation goes to the case's ``profile`` key.

Timings on a shared machine are noisy: quote figures measured while nothing else runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "vs_torch.json")
TARGET_SPEEDUP = 2.0  # the quality bar: JAX at least 2x faster than PyTorch eager
CONTENDED = 0.8  # CPU utilisation below this fraction of --threads flags a contended run


# -- helpers (no framework imported) ------------------------------------------------------------

def summarize(times_s: list[float]) -> dict[str, float]:
    """Per-step wall times (s) -> {"median", "p25", "p75", "iqr", "mean", "min", "max"} in ms."""
    ms = sorted(1e3 * t for t in times_s)
    if len(ms) == 1:
        q1 = q3 = ms[0]
    else:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return {"median": statistics.median(ms), "p25": q1, "p75": q3, "iqr": q3 - q1,
            "mean": statistics.fmean(ms), "min": ms[0], "max": ms[-1], "n": len(ms)}


def time_calls(fn: Callable[[], Any], warmup: int, reps: int) -> dict[str, Any]:
    """Call ``fn`` (which must return only when its work is done) ``warmup`` times untimed,
    then ``reps`` times timed. Returns the summary plus the CPU utilisation over the timed
    calls (process CPU seconds / wall seconds: about the number of busy threads)."""
    for _ in range(warmup):
        fn()
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - wall0
    return {"ms": summarize(times), "cpu_utilisation": (time.process_time() - cpu0) / wall}


def thread_environment(threads: int) -> dict[str, str]:
    """The environment variables a worker sets before importing JAX or torch."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")  # one CPU device
             and not f.startswith("--xla_cpu_multi_thread_eigen")]
    flags.append("--xla_cpu_multi_thread_eigen=true")
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "PJRT_NPROC": n, "XLA_FLAGS": " ".join(flags), "TF_CPP_MIN_LOG_LEVEL": "2",
            "JAX_PLATFORMS": "cpu"}


def os_thread_count() -> int:
    """Threads of this process now (Linux), -1 if unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


# -- cases ----------------------------------------------------------------------------------------
#
# A case builds the same model in both frameworks and exposes one train step on each side. The
# JAX side runs first; it writes the shared initial weights and inputs (``exchange``: numpy
# arrays) that the torch side loads.

@dataclasses.dataclass
class JaxSide:
    """step(state, *args) -> (state, loss), pure (the worker jits it, donating ``state``)."""

    step: Callable
    state: Any
    args: tuple
    params: int
    exchange: dict  # numpy arrays for the torch side
    info: dict
    # For the profile: components(state) -> {name: zero-argument jitted call}, given the
    # current train state (the initial arrays were donated to the first step).
    components: Callable[[Any], dict[str, Callable[[], Any]]] | None = None


@dataclasses.dataclass
class TorchSide:
    """step() -> float loss: one full update (returns when done)."""

    step: Callable[[], float]
    params: int
    info: dict
    components: Callable[[], dict[str, Callable[[], Any]]] | None = None


class MotionCase:
    """Stage 2: MotionDiT of a ``configs/motion.py`` variant, denoising loss with drops."""

    def __init__(self, variant: str, batch: int):
        self.variant, self.batch = variant, batch

    def config(self):
        from configs.motion import get_config

        c = get_config(self.variant)
        c.data.batch_size = self.batch
        return c

    def describe(self) -> dict:
        c = self.config()
        m = c.model
        return {"stage": 2, "model": "MotionDiT", "config": f"configs/motion.py:{self.variant}",
                "batch": self.batch, "tokens_per_example": m.context + m.window,
                "width": m.width, "depth": m.depth, "heads": m.heads, "dtype": m.dtype,
                "velocity_weight": c.diffusion.velocity_weight,
                "remat": False,  # MotionDiT has no rematerialisation (no nnx.remat in the model)
                "attention": "einsum softmax attention (vasa_jax.nn.attention.SelfAttention)"}

    def inputs(self, c) -> dict:
        """One batch in data units plus its draws (timesteps, noise, condition drops with the
        config's probabilities), numpy, seeded."""
        import numpy as np

        r = np.random.default_rng(0)
        b, w, k = self.batch, c.model.window, c.model.context
        m, a, d = c.model.motion_dim, c.model.audio_dim, c.diffusion
        f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
        tail = r.integers(1, (d.max_audio_tail or max(1, w // 5)) + 1, b)
        tail = np.where(r.random(b) < d.p_audio_tail, tail, 0)
        return {
            "motion": f32(r.normal(size=(b, k + w, m))),
            "audio_features": f32(r.normal(size=(b, k + w, a))),
            "gaze": f32(r.uniform(-0.5, 0.5, (b, 2))), "distance": f32(r.uniform(-1, 1, b)),
            "emotion": r.integers(0, max(c.model.num_emotions, 1), b).astype(np.int32),
            "t": r.integers(0, d.train_steps, b).astype(np.int32),
            "noise": f32(r.normal(size=(b, w, m))),
            **{f"drop/{n}": r.random(b) < d.p_condition
               for n in ("audio", "gaze", "distance", "emotion")},
            "drop/context": r.random(b) < d.p_context,
            "drop/audio_frames": np.arange(w)[None] < (w - tail)[:, None],
        }

    @staticmethod
    def split(inp: dict, to: Callable) -> tuple[dict, Any, Any, dict]:
        batch = {k: to(inp[k]) for k in ("motion", "audio_features", "gaze", "distance",
                                          "emotion")}
        drops = {k[5:]: to(v) for k, v in inp.items() if k.startswith("drop/")}
        return batch, to(inp["t"]), to(inp["noise"]), drops

    # -- JAX --------------------------------------------------------------------------------------
    def jax_side(self, total_steps: int) -> JaxSide:
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax
        from flax import nnx

        from vasa_jax.interop.motion_dit import flax_to_torch
        from vasa_jax.motion import diffusion
        from vasa_jax.motion.dit import make_motion_dit
        from vasa_jax.motion.objective import denoising_loss
        from vasa_jax.train.state import lr_schedule, make_optimizer

        c = self.config()
        model = make_motion_dit(c.model, rngs=nnx.Rngs(c.seed))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        schedule = diffusion.make_schedule(c.diffusion.schedule, c.diffusion.train_steps)
        tx = make_optimizer(c.optim, c.train.steps)
        vw = float(c.diffusion.velocity_weight)
        inp = self.inputs(c)
        batch, t, noise, drops = self.split(inp, jnp.asarray)

        def loss_fn(p, rest, batch, t, noise, drops):
            return denoising_loss(nnx.merge(graphdef, p, rest), schedule, batch, t, noise,
                                  drops, vw)[0]

        def step(state, rest, batch, t, noise, drops):
            p, opt_state = state
            loss, grads = jax.value_and_grad(loss_fn)(p, rest, batch, t, noise, drops)
            updates, opt_state = tx.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), loss

        exchange = {"w/" + k: v for k, v in flax_to_torch(nnx.state(model)).items()}
        exchange.update({"in/" + k: np.asarray(v) for k, v in inp.items()})
        # The learning rate of each update, so torch follows the same schedule exactly.
        lrs = lr_schedule(c.optim, c.train.steps)
        exchange["lr"] = np.array([float(lrs(i)) for i in range(total_steps)], np.float64)

        def components(state):
            """Jitted pieces for the profile: forward (loss), forward+backward, the optimiser
            update alone, and one block's attention / MLP (forward+backward)."""
            params, opt_state = state
            args = (rest, batch, t, noise, drops)
            fwd = jax.jit(loss_fn)
            fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
            grads = fwd_bwd(params, *args)[1]
            upd = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
            blk = nnx.merge(graphdef, params, rest).blocks[0]
            n = c.model.context + c.model.window
            x = jax.random.normal(jax.random.PRNGKey(0), (self.batch, n, c.model.width))
            mask = jnp.ones((self.batch, n), bool)
            attn_g, attn_p = nnx.split(blk.attn)
            mlp_g, mlp_p = nnx.split(blk.mlp)
            attn = jax.jit(jax.grad(lambda p, x: nnx.merge(attn_g, p)(x, mask).sum(), (0, 1)))
            mlp = jax.jit(jax.grad(lambda p, x: nnx.merge(mlp_g, p)(x).sum(), (0, 1)))
            return {"forward": lambda: fwd(params, *args),
                    "forward_backward": lambda: fwd_bwd(params, *args),
                    "optimizer": lambda: upd(grads, opt_state, params),
                    "attention_fwd_bwd_per_block": lambda: attn(attn_p, x),
                    "mlp_fwd_bwd_per_block": lambda: mlp(mlp_p, x)}

        return JaxSide(step=step, state=(params, tx.init(params)),
                       args=(rest, batch, t, noise, drops),
                       params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
                       exchange=exchange, info=self.describe(), components=components)

    # -- torch ------------------------------------------------------------------------------------
    def torch_side(self, exchange: dict, adamw: str) -> TorchSide:
        import numpy as np
        import torch

        from baselines.torch_baseline import diffusion as tdiff
        from baselines.torch_baseline.motion_dit import make_motion_dit as make_torch

        c = self.config()
        model = make_torch(c.model)
        model.load_state_dict({k[2:]: torch.from_numpy(v.copy()) for k, v in exchange.items()
                               if k.startswith("w/")}, strict=True)
        model.train()
        schedule = tdiff.make_schedule(c.diffusion.schedule, c.diffusion.train_steps)
        inp = {k[3:]: v for k, v in exchange.items() if k.startswith("in/")}
        batch, t, noise, drops = self.split(inp, lambda a: torch.from_numpy(np.array(a)))
        vw = float(c.diffusion.velocity_weight)
        opt = torch_adamw(model, c.optim, adamw)
        lrs = [float(x) for x in exchange["lr"]]
        count = [0]

        def loss_fn():
            return tdiff.training_loss(model, schedule, batch, t, noise, drops,
                                       velocity_weight=vw)[0]

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(c.optim.clip_norm))
            for g in opt.param_groups:  # the optax schedule, one value per update
                g["lr"] = lrs[min(count[0], len(lrs) - 1)]
            opt.step()
            count[0] += 1
            return float(loss.detach())

        def components():
            """The same pieces as the JAX side, eager."""
            blk = model.blocks[0]
            n = c.model.context + c.model.window
            x = torch.randn(self.batch, n, c.model.width, requires_grad=True)
            mask = torch.ones(self.batch, n, dtype=torch.bool)

            def fwd():
                with torch.no_grad():
                    return loss_fn()

            def fwd_bwd():
                model.zero_grad(set_to_none=True)
                loss_fn().backward()

            def optimizer():
                opt.step()

            def part(module, *extra):
                def run():
                    module.zero_grad(set_to_none=True)
                    x.grad = None
                    module(x, *extra).sum().backward()
                return run

            fwd_bwd()  # gradients present for the optimiser piece
            return {"forward": fwd, "forward_backward": fwd_bwd, "optimizer": optimizer,
                    "attention_fwd_bwd_per_block": part(blk.attn, mask),
                    "mlp_fwd_bwd_per_block": part(blk.mlp)}

        return TorchSide(step=step, params=sum(p.numel() for p in model.parameters()),
                         info={"adamw": adamw}, components=components)


def torch_adamw(model, optim_cfg, impl: str):
    """AdamW with the config's betas/eps/decay; weight decay on tensors with ndim >= 2 (our
    optax mask). ``impl``: 'default' (torch's choice: the per-tensor loop on CPU), 'foreach'
    or 'fused'."""
    return torch_adamw_params(list(model.parameters()), optim_cfg, impl)


def torch_adamw_params(params, optim_cfg, impl: str):
    """``torch_adamw`` over a list of parameters (one parameter group of a GAN)."""
    import torch

    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    kw = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    return torch.optim.AdamW(
        [g for g in ({"params": decay, "weight_decay": float(optim_cfg.weight_decay)},
                     {"params": other, "weight_decay": 0.0}) if g["params"]],
        lr=float(optim_cfg.lr), betas=(float(optim_cfg.b1), float(optim_cfg.b2)),
        eps=float(optim_cfg.eps), **kw)


class LatentCase:
    """Stage 1: FaceLatentModel of a ``configs/latent.py`` variant, the trainer's full step:
    the generator loss of ``LatentTask`` (reconstruction L1, motion-weighted L1, VGG16
    perceptual, and the GAN, l_consist and l_cross_id terms the config enables), the
    discriminator's hinge loss when the config has GAN terms, and one clipped AdamW per
    parameter group (``LatentTask.param_groups``: discriminator, generator)."""

    def __init__(self, variant: str = "synthtalk64", batch: int | None = None):
        self.variant, self.batch = variant, batch

    def config(self):
        from configs.latent import get_config

        c = get_config(self.variant)
        if self.batch is not None:
            c.data.batch_size = self.batch
        return c

    def describe(self) -> dict:
        c = self.config()
        m, lc = c.model, c.loss
        gan = bool(lc.adversarial or lc.feature_matching)
        return {"stage": 1, "model": "FaceLatentModel",
                "config": f"configs/latent.py:{self.variant}",
                "batch": int(c.data.batch_size), "resolution": int(m.resolution),
                "dtype": m.dtype, "images_decoded_per_step": self._decoded(c),
                "loss_terms": {k: float(lc[k]) for k in ("l1", "motion_l1", "perceptual",
                                                          "adversarial", "feature_matching",
                                                          "consist", "cross_id")},
                "perceptual_layers": int(lc.perceptual_layers),
                "discriminator_trained": gan,
                "remat": False,
                "note": None if gan else (
                    "no GAN terms in this config: the discriminator is not run; both sides "
                    "still apply its (zero-gradient) AdamW update, weight decay only, as our "
                    "trainer does")}

    @staticmethod
    def _decoded(c) -> int:
        b, lc = int(c.data.batch_size), c.loss
        a = max(1, int(round(b * lc.aux_fraction)))
        return b * (2 if lc.symmetric else 1) + (2 * a if lc.consist else 0) + (
            a if lc.cross_id else 0)

    def inputs(self, c) -> dict:
        """A fixed uint8 (b, 2, R, R, 3) batch of (source, driver) frames, seeded."""
        import numpy as np

        r = np.random.default_rng(0)
        res = c.model.resolution
        return {"frames": r.integers(0, 256, (c.data.batch_size, 2, res, res, 3), np.uint8)}

    # -- JAX --------------------------------------------------------------------------------------
    def jax_side(self, total_steps: int) -> JaxSide:
        import jax
        import jax.numpy as jnp
        import numpy as np
        from flax import nnx

        from vasa_jax.interop.face_latent import flax_to_torch, randomize
        from vasa_jax.latent.objective import generator_loss_terms
        from vasa_jax.models import split_groups
        from vasa_jax.train.latent_task import LatentTask
        from vasa_jax.train.state import lr_schedule, make_optimizer, update_groups

        c = self.config()
        task = LatentTask(c)
        # Weights: deterministic random values for every parameter (``randomize`` of the
        # abstract model, numpy-seeded): the trainer's initialiser compiles one XLA program per
        # parameter shape (~30 s here) and a step's time does not depend on the values.
        model = randomize(nnx.eval_shape(lambda: task.make_model(nnx.Rngs(c.seed))), c.seed)
        graphdef, params, rest = split_groups(model, task.param_groups)
        groups = tuple(task.param_groups)
        txs = {g: make_optimizer(c.optim, c.train.steps) for g in groups}  # one per group
        inp = self.inputs(c)
        frames = jnp.asarray(inp["frames"])

        def grads_fn(p, rest, frames):
            grads, loss, _ = task.grads(graphdef, p, rest, {"frames": frames}, None)
            return grads, loss

        def update(grads, opt_state, p):  # Trainer._step's updates
            return update_groups(txs, grads, opt_state, p)

        def step(state, rest, frames):
            p, opt_state = state
            grads, loss = grads_fn(p, rest, frames)
            return update(grads, opt_state, p), loss

        exchange = {"w/" + k: v for k, v in flax_to_torch(nnx.state(model)).items()}
        exchange.update({"in/" + k: np.asarray(v) for k, v in inp.items()})
        lrs = lr_schedule(c.optim, c.train.steps)
        exchange["lr"] = np.array([float(lrs(i)) for i in range(total_steps)], np.float64)

        def components(state):
            """Jitted pieces for the profile: the generator loss (forward), both players'
            gradients (forward+backward), the two optimiser updates."""
            p, opt_state = state

            def g_loss(p, rest, frames):
                mdl = nnx.merge(graphdef, *[p[g] for g in groups], rest)
                return generator_loss_terms(mdl, frames, c.loss)[0]

            fwd = jax.jit(g_loss)
            fwd_bwd = jax.jit(grads_fn)
            grads = fwd_bwd(p, rest, frames)[0]
            upd = jax.jit(update)
            return {"forward": lambda: fwd(p, rest, frames),
                    "forward_backward": lambda: fwd_bwd(p, rest, frames),
                    "optimizer": lambda: upd(grads, opt_state, p)}

        return JaxSide(step=step, state=(params, {g: txs[g].init(params[g]) for g in groups}),
                       args=(rest, frames),
                       params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
                       exchange=exchange, info=self.describe(), components=components)

    # -- torch ------------------------------------------------------------------------------------
    def torch_side(self, exchange: dict, adamw: str) -> TorchSide:
        import numpy as np
        import torch

        from baselines.torch_baseline import latent_losses as tl
        from baselines.torch_baseline.face_latent import make_face_latent_model

        c = self.config()
        lc = c.loss
        model = make_face_latent_model(c.model)
        model.load_state_dict({k[2:]: torch.from_numpy(v.copy()) for k, v in exchange.items()
                               if k.startswith("w/")}, strict=True)
        model.train()
        frames = torch.from_numpy(np.array(exchange["in/frames"]))
        vgg = tl.VGG16Features(lc.perceptual_layers) if lc.perceptual else None
        disc = [p for n, p in model.named_parameters() if n.startswith("discriminator.")]
        gen = model.generator_parameters()
        groups = {"discriminator": disc, "generator": gen}
        opts = {g: torch_adamw_params(ps, c.optim, adamw) for g, ps in groups.items()}
        clip = float(c.optim.clip_norm)
        lrs = [float(x) for x in exchange["lr"]]
        count = [0]

        def zero_grad():
            for o in opts.values():
                o.zero_grad(set_to_none=True)

        def grads() -> float:
            zero_grad()
            g_total, d_total, _ = tl.stage1_losses(model, frames, lc, vgg)
            g_total.backward()
            if d_total is not None:
                d_total.backward()
            else:  # our trainer updates the discriminator with zero gradients (weight decay)
                for p in disc:
                    p.grad = torch.zeros_like(p)
            return float(g_total.detach())

        def update():
            lr = lrs[min(count[0], len(lrs) - 1)]  # the optax schedule, one value per update
            for g, ps in groups.items():
                torch.nn.utils.clip_grad_norm_(ps, clip)  # per group, as optax per group
                for pg in opts[g].param_groups:
                    pg["lr"] = lr
                opts[g].step()

        def step() -> float:
            loss = grads()
            update()
            count[0] += 1
            return loss

        def components():
            def fwd():
                with torch.no_grad():
                    return tl.generator_loss_terms(model, frames, lc, vgg)[0]

            grads()  # gradients present for the optimiser piece
            return {"forward": fwd, "forward_backward": grads,
                    "optimizer": lambda: [o.step() for o in opts.values()]}

        return TorchSide(step=step, params=sum(p.numel() for p in model.parameters()),
                         info={"adamw": adamw, "clip": "clip_grad_norm_ per parameter group"},
                         components=components)


CASES: dict[str, Any] = {
    "motion_paper_b8": MotionCase("paper", 8),
    "latent_synthtalk64": LatentCase("synthtalk64"),
    "motion_test": MotionCase("test", 8),
    "latent_test": LatentCase("test"),
}
DEFAULT_CASES = ("motion_paper_b8", "latent_synthtalk64")


# -- workers (one process per framework and case) -------------------------------------------------

def jax_worker(case, args) -> dict:
    import jax
    import numpy as np

    if not args.jax_cache:
        jax.config.update("jax_enable_compilation_cache", False)  # report real compile times
    total = max(args.warmup, 1) + args.steps  # updates before any profiling
    side = case.jax_side(total)
    np.savez(os.path.join(args.exchange, "exchange.npz"), **side.exchange)
    step = jax.jit(side.step, donate_argnums=0)
    t0 = time.perf_counter()
    lowered = step.lower(side.state, *side.args)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    from bench_common import xla_cost

    cost = xla_cost(compiled)
    holder = {"state": side.state}
    losses = []

    def one():
        holder["state"], loss = compiled(holder["state"], *side.args)
        jax.block_until_ready(holder["state"])
        losses.append(float(loss))

    t0 = time.perf_counter()
    one()
    first_ms = 1e3 * (time.perf_counter() - t0)
    timing = time_calls(one, max(args.warmup - 1, 0), args.steps)
    out = {"framework": "jax", "params": side.params, "lower_s": lower_s,
           "compile_s": compile_s, "first_step_ms": first_ms, "step_ms": timing["ms"],
           "cpu_utilisation": timing["cpu_utilisation"], "losses": losses,
           "xla_gflops_per_step": cost["flops"] / 1e9,
           "achieved_gflops": cost["flops"] / 1e6 / timing["ms"]["median"],
           "threads": {"PJRT_NPROC": os.environ.get("PJRT_NPROC"),
                       "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
                       "os_threads": os_thread_count(),
                       "affinity": sorted(os.sched_getaffinity(0))},
           "matmul_precision": str(jax.config.jax_default_matmul_precision),
           "devices": [str(d) for d in jax.devices()], "info": side.info}
    if args.profile:
        out["profile"] = jax_profile(side, compiled, holder, args)
    return out


def jax_profile(side: JaxSide, compiled, holder: dict, args) -> dict:
    """Component times, XLA's FLOPs against the measured matmul peak, and the top XLA thunks
    (by total time over a few traced steps)."""
    import collections

    import jax

    from bench_common import matmul_peak

    prof: dict[str, Any] = {"matmul_peak_gflops": matmul_peak(2048, 5)}  # as bench_motion
    if side.components is not None:
        comps = side.components(holder["state"])
        prof["components_ms"] = {}
        for name, fn in comps.items():
            run = lambda fn=fn: jax.block_until_ready(fn())  # noqa: E731
            prof["components_ms"][name] = time_calls(run, 2, args.profile_reps)["ms"]["median"]
    trace_dir = tempfile.mkdtemp(prefix="vs_torch_trace_")
    with jax.profiler.trace(trace_dir):
        for _ in range(args.profile_reps):
            holder["state"], loss = compiled(holder["state"], *side.args)
            jax.block_until_ready(holder["state"])
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not files:
        prof["top_thunks"] = "no trace written"
        return prof
    from jax.profiler import ProfileData

    data = ProfileData.from_file(files[-1])
    shutil.rmtree(trace_dir, ignore_errors=True)
    total = collections.Counter()
    calls = collections.Counter()
    for plane in data.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's threads (not Python's)
                continue
            for ev in line.events:  # thunks only, not the executor and pool events around them
                if ev.name.startswith("end: ") or "::" in ev.name:  # runtime scopes, waits
                    continue
                total[ev.name] += ev.duration_ns
                calls[ev.name] += 1
    hlo, op_names = {}, {}
    for text_line in compiled.as_text().splitlines():
        s = text_line.strip()
        if s.startswith(("%", "ROOT %")) and " = " in s:
            name = s.split(" = ", 1)[0].replace("ROOT ", "").lstrip("%")
            hlo[name] = s.split(" = ", 1)[1][:140]
            if 'op_name="' in s:
                op_names[name] = s.split('op_name="', 1)[1].split('"', 1)[0]
    grand = sum(total.values()) or 1
    prof["traced_thunk_ms_per_step"] = grand / 1e6 / args.profile_reps
    prof["top_thunks"] = [
        {"name": n, "ms_per_step": ns / 1e6 / args.profile_reps, "pct": 100 * ns / grand,
         "op_name": op_names.get(n, ""), "hlo": hlo.get(n, "")}
        for n, ns in total.most_common(args.top)]
    kinds, phases = collections.Counter(), collections.Counter()
    by_phase: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for n, ns in total.items():
        kind = n.rsplit(".", 1)[0] if n.rsplit(".", 1)[-1].isdigit() else n
        phase = thunk_phase(op_names.get(n, ""))
        kinds[kind] += ns
        phases[phase] += ns
        by_phase[phase][kind] += ns
    prof["thunk_kinds_pct"] = {k: 100 * v / grand for k, v in kinds.most_common(12)}
    prof["thunk_phase_pct"] = {k: 100 * v / grand for k, v in phases.most_common()}
    prof["thunk_kinds_by_phase_pct"] = {
        ph: {k: 100 * v / grand for k, v in c.most_common(6)} for ph, c in by_phase.items()}
    return prof


def thunk_phase(op_name: str) -> str:
    """The part of the step an XLA thunk belongs to, from the HLO op_name of its (root)
    instruction, e.g. ``jit(step)/transpose(jvp(bnd,dhk->bnhk))/dot_general``: 'backward',
    'forward', 'update' (the rest of the jitted step: clipping, AdamW), 'parameter_copies'
    (layout changes of the parameters themselves, named ``state[...]``) or 'unattributed'."""
    if "transpose(jvp" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    if op_name.startswith("jit("):
        return "update"
    return "parameter_copies" if op_name.startswith("state[") else "unattributed"


def torch_worker(case, args) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    with np.load(os.path.join(args.exchange, "exchange.npz")) as z:
        exchange = {k: z[k] for k in z.files}
    side = case.torch_side(exchange, args.torch_adamw)
    losses = []

    def one():
        losses.append(side.step())

    t0 = time.perf_counter()
    one()
    first_ms = 1e3 * (time.perf_counter() - t0)
    timing = time_calls(one, max(args.warmup - 1, 0), args.steps)
    out = {"framework": "torch", "params": side.params, "first_step_ms": first_ms,
           "step_ms": timing["ms"], "cpu_utilisation": timing["cpu_utilisation"],
           "losses": losses,
           "threads": {"torch.get_num_threads": torch.get_num_threads(),
                       "torch.get_num_interop_threads": torch.get_num_interop_threads(),
                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                       "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
                       "os_threads": os_thread_count(),
                       "affinity": sorted(os.sched_getaffinity(0))},
           "mkldnn": bool(torch.backends.mkldnn.is_available()),
           "info": side.info}
    if args.profile:
        out["profile"] = torch_profile(side, args)
    return out


def torch_profile(side: TorchSide, args) -> dict:
    """Component times and the top operators by self CPU time over a few profiled steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    prof: dict[str, Any] = {}
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(args.profile_reps):
            side.step()
    events = p.key_averages()
    grand = sum(e.self_cpu_time_total for e in events) or 1
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]
    prof["profiled_ms_per_step"] = grand / 1e3 / args.profile_reps
    prof["top_ops_self_cpu"] = [
        {"name": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / args.profile_reps,
         "pct": 100 * e.self_cpu_time_total / grand, "calls_per_step": e.count / args.profile_reps}
        for e in top]
    if side.components is not None:
        prof["components_ms"] = {}
        for name, fn in side.components().items():
            prof["components_ms"][name] = time_calls(fn, 2, args.profile_reps)["ms"]["median"]
    # Same matmul measure as the JAX side's peak (2048^3, fp32).
    a = torch.randn(2048, 2048)
    mm = time_calls(lambda: a @ a, 1, 5)["ms"]["median"]
    prof["matmul_peak_gflops"] = 2 * 2048 ** 3 / (mm / 1e3) / 1e9
    return prof


def run_worker(args) -> None:
    """Entry point of a worker process (``--worker jax|torch``): measure, write JSON."""
    sys.path.insert(0, REPO)
    sys.path.insert(0, HERE)
    case = CASES[args.case[0]]
    out = jax_worker(case, args) if args.worker == "jax" else torch_worker(case, args)
    with open(os.path.join(args.exchange, f"{args.worker}.json"), "w") as f:
        json.dump(out, f)


# -- parent ---------------------------------------------------------------------------------------

def spawn(framework: str, case_name: str, args, exchange: str, profile: bool) -> dict:
    """Run one worker process with the thread environment; return its JSON."""
    env = dict(os.environ, **thread_environment(args.threads))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if args.jax_cache:  # smoke tests only: compile_s is then (partly) a cache read
        env.update(JAX_COMPILATION_CACHE_DIR=os.path.abspath(args.jax_cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--case", case_name,
           "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--exchange", exchange,
           "--torch-adamw", args.torch_adamw, "--profile-reps", str(args.profile_reps),
           "--top", str(args.top), "--jax-cache", args.jax_cache]
    if profile:
        cmd.append("--profile-worker")
    if args.pin:
        cmd = ["taskset", "-c", f"0-{args.threads - 1}"] + cmd
    subprocess.run(cmd, env=env, check=True, cwd=REPO)
    with open(os.path.join(exchange, f"{framework}.json")) as f:
        return json.load(f)


def explain(case_name: str, res: dict) -> str:
    """A short account of where the time goes, from the two profiles."""
    j, t = res["jax"].get("profile", {}), res["torch"].get("profile", {})
    jc, tc = j.get("components_ms", {}), t.get("components_ms", {})
    parts = [f"{case_name}: JAX {res['jax']['step_ms']['median']:.0f} ms vs torch "
             f"{res['torch']['step_ms']['median']:.0f} ms per step (speedup "
             f"{res['speedup']:.2f}x)."]
    if "matmul_peak_gflops" in j and "xla_gflops_per_step" in res["jax"]:
        parts.append(
            f"XLA counts {res['jax']['xla_gflops_per_step']:.1f} GFLOP/step; JAX runs at "
            f"{res['jax']['achieved_gflops']:.0f} GFLOP/s = "
            f"{100 * res['jax']['achieved_gflops'] / j['matmul_peak_gflops']:.0f}% of its 2048^3 "
            f"matmul rate ({j['matmul_peak_gflops']:.0f} GFLOP/s), torch at "
            f"{res['jax']['xla_gflops_per_step'] * 1e3 / res['torch']['step_ms']['median']:.0f}"
            f" GFLOP/s (its own matmul rate {t.get('matmul_peak_gflops', float('nan')):.0f}).")
        ideal_ms = res["jax"]["xla_gflops_per_step"] / j["matmul_peak_gflops"] * 1e3
        parts.append(
            f"Even at that matmul rate for every FLOP and no other cost, a JAX step would take "
            f"{ideal_ms:.0f} ms: at most {res['torch']['step_ms']['median'] / ideal_ms:.2f}x "
            f"faster than this torch step.")
    if jc and tc:
        rows = ", ".join(f"{k} {jc[k]:.1f}/{tc[k]:.1f}" for k in jc if k in tc)
        parts.append(f"Components, JAX/torch ms: {rows}.")
    if t.get("top_ops_self_cpu"):
        top = "; ".join(f"{o['name']} {o['pct']:.0f}%" for o in t["top_ops_self_cpu"][:5])
        mm = sum(o["pct"] for o in t["top_ops_self_cpu"] if o["name"] in TORCH_MATMULS)
        parts.append(f"torch top ops (self CPU): {top}; matmuls {mm:.0f}% of its time.")
    if isinstance(j.get("thunk_kinds_pct"), dict):
        kinds = j["thunk_kinds_pct"]
        top = "; ".join(f"{k} {v:.0f}%" for k, v in list(kinds.items())[:5])
        mm = sum(v for k, v in kinds.items() if k in XLA_MATMULS)
        parts.append(f"XLA thunk kinds: {top}; matmuls (dot, ynn_fusion) {mm:.0f}% of its "
                     f"time.")
    if isinstance(j.get("thunk_phase_pct"), dict):
        parts.append("XLA time by phase (fusion roots): " + "; ".join(
            f"{k} {v:.0f}%" for k, v in j["thunk_phase_pct"].items()) + ".")
    return " ".join(parts)


TORCH_MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")
XLA_MATMULS = ("dot", "ynn_fusion", "xnn_fusion", "onednn_matmul")


def run_case(name: str, args) -> dict:
    case = CASES[name]
    res: dict[str, Any] = {"case": name, **case.describe()}
    with tempfile.TemporaryDirectory(prefix="vs_torch_") as ex:
        try:
            res["jax"] = spawn("jax", name, args, ex, args.profile == "always")
            res["torch"] = spawn("torch", name, args, ex, args.profile == "always")
        except subprocess.CalledProcessError as e:
            if os.path.exists(os.path.join(ex, "not_implemented")):
                with open(os.path.join(ex, "not_implemented")) as f:
                    res["status"] = "not_implemented"
                    res["reason"] = f.read()
                return res
            raise RuntimeError(f"case {name}: a worker failed ({e})") from e
        j, t = res["jax"]["step_ms"]["median"], res["torch"]["step_ms"]["median"]
        res.update(status="ok", params=res["jax"]["params"], speedup=t / j,
                   jax_over_torch=j / t, meets_target=t / j >= TARGET_SPEEDUP,
                   # Fastest step against fastest step: less sensitive to other load.
                   speedup_of_min=res["torch"]["step_ms"]["min"] / res["jax"]["step_ms"]["min"],
                   compile_s=res["jax"]["compile_s"])
        # A framework that kept fewer than ~80% of its threads busy was sharing the CPU.
        res["contended"] = [fw for fw in ("jax", "torch")
                            if res[fw]["cpu_utilisation"] < CONTENDED * args.threads]
        if res["contended"]:
            print(f"WARNING {name}: {', '.join(res['contended'])} kept fewer than "
                  f"{CONTENDED * args.threads:.1f} CPUs busy (of {args.threads} threads): other "
                  f"load on this machine; re-measure on a quiet one")
        if res["jax"]["params"] != res["torch"]["params"]:
            res["params_mismatch"] = [res["jax"]["params"], res["torch"]["params"]]
        lj, lt = res["jax"]["losses"], res["torch"]["losses"]
        res["loss_max_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(lj, lt))
        # Step 0: same weights, same batch, no update yet: the two losses must agree closely.
        res["loss_step0_rel_diff"] = abs(lj[0] - lt[0]) / max(abs(lt[0]), 1e-12)
        if res["loss_step0_rel_diff"] > 1e-4:
            print(f"WARNING {name}: the step-0 losses differ by "
                  f"{res['loss_step0_rel_diff']:.2e} (relative; JAX {lj[0]:.6g}, torch "
                  f"{lt[0]:.6g}): the two sides do not compute the same step")
        if res["loss_max_rel_diff"] > 1e-3:
            print(f"WARNING {name}: the two frameworks' losses differ by "
                  f"{res['loss_max_rel_diff']:.2e} (relative): check the comparison")
        if args.profile == "auto" and not res["meets_target"]:
            print(f"{name}: JAX is {res['speedup']:.2f}x torch (< {TARGET_SPEEDUP:g}x): "
                  f"profiling both")
            res["jax"]["profile"] = spawn("jax", name, args, ex, True)["profile"]
            res["torch"]["profile"] = spawn("torch", name, args, ex, True)["profile"]
        if "profile" in res["jax"]:
            res["profile"] = explain(name, res)
    return res


def machine_info() -> dict:
    from importlib import metadata

    sys.path.insert(0, HERE)
    from bench_common import cpu_model

    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "load_average_at_start": list(os.getloadavg())}


def print_table(results: dict) -> None:
    print(f"\n{'case':<20} {'params':>8} {'jax ms (IQR)':>16} {'torch ms (IQR)':>16} "
          f"{'speedup':>8} {'(of min)':>8} {'compile s':>9}")
    for name, r in results.items():
        if r.get("status") != "ok":
            print(f"{name:<20} {r.get('status', '?')}: {r.get('reason', '')[:70]}")
            continue
        j, t = r["jax"]["step_ms"], r["torch"]["step_ms"]
        print(f"{name:<20} {r['params'] / 1e6:>7.2f}M {j['median']:>8.1f} ({j['iqr']:>5.1f}) "
              f"{t['median']:>8.1f} ({t['iqr']:>5.1f}) {r['speedup']:>7.2f}x "
              f"{r['speedup_of_min']:>7.2f}x {r['compile_s']:>9.1f}")
    print("speedup = torch / JAX median step time ('of min': of the fastest steps); IQR = "
          "p75 - p25 of the timed steps\n")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=sorted(CASES),
                    help="repeatable; default: " + ", ".join(DEFAULT_CASES))
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for each framework (intra-op)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (the first included)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help=f"auto: profile a case where JAX is < {TARGET_SPEEDUP:g}x faster")
    ap.add_argument("--profile-reps", type=int, default=3, help="steps per profile measurement")
    ap.add_argument("--top", type=int, default=15, help="rows of the op/thunk tables")
    ap.add_argument("--torch-adamw", choices=("default", "foreach", "fused"), default="fused",
                    help="torch.optim.AdamW implementation (fused: the fastest on CPU, like the "
                         "XLA-fused optax update; default: torch's per-tensor loop)")
    ap.add_argument("--pin", action="store_true", help="taskset both workers to CPUs 0..N-1")
    ap.add_argument("--jax-cache", default="", metavar="DIR",
                    help="use JAX's persistent compilation cache in DIR (for smoke tests; "
                         "compile_s is then not a real compile time). Default: off")
    ap.add_argument("--out", default=DEFAULT_OUT)
    # internal: worker processes
    ap.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--exchange", help=argparse.SUPPRESS)
    ap.add_argument("--profile-worker", dest="profile_flag", action="store_true",
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.profile_enabled = args.profile_flag
    if args.threads < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--threads and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        args.profile = args.profile_enabled
        try:
            run_worker(args)
        except NotImplementedError as e:
            with open(os.path.join(args.exchange, "not_implemented"), "w") as f:
                f.write(str(e))
            print(f"not implemented: {e}", file=sys.stderr)
            sys.exit(3)
        return None
    sys.path.insert(0, REPO)
    names = args.case or list(DEFAULT_CASES)
    result = {"machine": machine_info(),
              "settings": {"threads": args.threads, "warmup": args.warmup, "steps": args.steps,
                           "pin": args.pin, "torch_adamw": args.torch_adamw,
                           "jax_compilation_cache": args.jax_cache or None,
                           "profile": args.profile, "target_speedup": TARGET_SPEEDUP,
                           "worker_env": thread_environment(args.threads)},
              "cases": {}}
    for name in names:
        print(f"== {name}")
        result["cases"][name] = run_case(name, args)
        print_table({name: result["cases"][name]})
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    if len(names) > 1:
        print_table(result["cases"])
    for r in result["cases"].values():
        if "profile" in r:
            print(r["profile"])
    sys.path.insert(0, HERE)
    from bench_common import save_json

    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
