"""Stage-2 speed on this machine: the `paper` MotionDiT train step and sampling real-time factor.

  python benchmarks/bench_motion.py [--out benchmarks/results/motion.json] [--batch 8]

Prints and writes JSON with:
  matmul_peak_gflops          measured fp32 matmul throughput of this machine (2048^3 matmuls)
  train_step_ms               paper config (8 x 512 x 8 heads, W=50, K=10), global batch 8
  train_step_gflops_xla       FLOPs per step from XLA's cost analysis of the compiled step
  train_step_fraction_of_peak achieved FLOP/s divided by the measured matmul peak
  sampling_rtf.{50,10}_steps  seconds of compute per second of 25 fps video, batch 1, with CFG
                              on audio and gaze (one doubled batch), 10 s of audio
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from bench_common import matmul_peak, save_json, xla_cost

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def bench_train_step(batch: int, reps: int = 5) -> dict:
    import jax
    import numpy as np

    from configs.motion import get_config
    from vasa_jax import parallel
    from vasa_jax.train.motion_task import MotionTask
    from vasa_jax.train.trainer import Trainer

    c = get_config("paper")
    c.data.batch_size = batch
    trainer = Trainer(MotionTask(c), c, "/tmp/bench_motion_unused", prepare=False)
    t_frames = c.model.context + c.model.window
    rng = np.random.default_rng(0)
    host = {"audio_features": rng.normal(size=(batch, t_frames, c.model.audio_dim)).astype(np.float32),
            "motion": rng.normal(size=(batch, t_frames, c.model.motion_dim)).astype(np.float32),
            "gaze": np.zeros((batch, 2), np.float32), "distance": np.zeros((batch,), np.float32),
            "emotion": np.zeros((batch,), np.int32), "pos": np.arange(batch, dtype=np.int64)}
    dev = trainer.task.device_batch(host)
    step = trainer.compile_step(dev)
    gbatch = parallel.global_batch(dev, trainer.mesh)
    t = time.perf_counter()
    compiled = step.lower(trainer.state, gbatch).compile()
    compile_s = time.perf_counter() - t
    flops = xla_cost(compiled)["flops"]
    for _ in range(2):  # warm up
        trainer.train_step(host)["loss"].block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        m = trainer.train_step(host)
    m["loss"].block_until_ready()
    dt = (time.perf_counter() - t) / reps
    return {"params": trainer.num_params(), "batch": batch, "compile_s": compile_s,
            "train_step_ms": dt * 1e3, "train_step_gflops_xla": flops / 1e9,
            "achieved_gflops": flops / dt / 1e9, "devices": jax.device_count()}


def bench_sampling(seconds: float = 10.0) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from configs.motion import get_config
    from vasa_jax.motion import diffusion
    from vasa_jax.motion.dit import make_motion_dit
    from vasa_jax.motion.generate import generate_motion

    c = get_config("paper")
    model = make_motion_dit(c.model, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    schedule = diffusion.make_schedule(c.diffusion.schedule, c.diffusion.train_steps)
    frames = int(seconds * 25)
    audio = jax.random.normal(jax.random.PRNGKey(0), (1, frames, c.model.audio_dim))
    cond = {"gaze": jnp.zeros((1, 2)), "distance": jnp.zeros((1,)),
            "emotion": jnp.zeros((1,), jnp.int32)}
    out = {}
    for steps in (50, 10):
        f = jax.jit(lambda st, a, k, n=steps: generate_motion(
            nnx.merge(graphdef, st), a, cond, k, schedule, num_steps=n,
            cfg_scales=dict(c.sample.cfg)))
        f(state, audio, jax.random.PRNGKey(1)).block_until_ready()
        t = time.perf_counter()
        f(state, audio, jax.random.PRNGKey(2)).block_until_ready()
        out[f"{steps}_steps"] = (time.perf_counter() - t) / seconds
        print(f"sampling, {steps} steps with CFG: real-time factor {out[f'{steps}_steps']:.3f} "
              f"({seconds:.0f} s of motion in {out[f'{steps}_steps'] * seconds:.2f} s)")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "motion.json"))
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    peak = matmul_peak()
    print(f"fp32 matmul peak (measured): {peak:.1f} GFLOP/s")
    train = bench_train_step(args.batch)
    frac = train["achieved_gflops"] / peak
    print(f"paper MotionDiT ({train['params'] / 1e6:.1f}M params), batch {args.batch}: "
          f"{train['train_step_ms']:.0f} ms/step, {train['train_step_gflops_xla']:.1f} GFLOP/step "
          f"(XLA), {train['achieved_gflops']:.1f} GFLOP/s = {100 * frac:.0f}% of the matmul peak; "
          f"compile {train['compile_s']:.1f} s")
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "matmul_peak_gflops": peak, **train, "train_step_fraction_of_peak": frac,
              "sampling_rtf": bench_sampling()}
    save_json(result, args.out)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
