"""Stage-2 speed on this machine: the `paper` MotionDiT train step, sampling real-time factor,
and wav2vec2-base feature extraction against PyTorch.

  python benchmarks/bench_motion.py [--out benchmarks/results/motion.json] [--batch 8]
  python benchmarks/bench_motion.py --only wav2vec2 [--threads 2] [--seconds 10]

Prints and writes JSON with:
  matmul_peak_gflops          measured fp32 matmul throughput of this machine (2048^3 matmuls)
  train_step_ms               paper config (8 x 512 x 8 heads, W=50, K=10), global batch 8
  train_step_gflops_xla       FLOPs per step from XLA's cost analysis of the compiled step
  train_step_fraction_of_peak achieved FLOP/s divided by the measured matmul peak
  sampling_rtf.{50,10}_steps  seconds of compute per second of 25 fps video, batch 1, with CFG
                              on audio and gaze (one doubled batch), 10 s of audio
  wav2vec2_base               feature extraction of ``seconds`` of 16 kHz audio, batch 1, by a
                              randomly initialised wav2vec2-base (transformers' default config,
                              95M params) converted to ours: seconds of compute per second of
                              audio (real-time factor, median of 5 after 2 warm-up calls) for the
                              JAX frontend (every hidden state, pair-averaged to 25 fps) and for
                              transformers' PyTorch Wav2Vec2Model (output_hidden_states, inference
                              mode); each side in its own process with the same thread count
                              (PJRT_NPROC / torch.set_num_threads, as bench_vs_torch.py)
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from bench_common import bench_parser, matmul_peak, save_json, xla_cost

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


def _wav2vec2_worker(side: str, hf_dir: str, ckpt: str, seconds: float, threads: int) -> dict:
    """One framework's wav2vec2-base timing (runs in a worker process with its thread count)."""
    import numpy as np

    from bench_vs_torch import time_calls

    audio = np.random.default_rng(0).uniform(-0.5, 0.5, int(seconds * 16000)).astype(np.float32)
    t0 = time.perf_counter()
    if side == "jax":
        from vasa_jax.motion.audio import make_frontend

        fe = make_frontend("wav2vec2", checkpoint=ckpt, mix_layers=True)
        fe(audio)
        first_s = time.perf_counter() - t0
        run = lambda: fe(audio)  # noqa: E731 (returns host arrays: the work is done)
    else:
        import torch
        import transformers

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        model = transformers.Wav2Vec2Model.from_pretrained(hf_dir).eval()
        x = torch.from_numpy((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7))[None]

        def run():
            with torch.inference_mode():
                return model(x, output_hidden_states=True).hidden_states

        run()
        first_s = time.perf_counter() - t0
    timing = time_calls(run, warmup=1, reps=5)
    return {"rtf": timing["ms"]["median"] / 1e3 / seconds, "ms": timing["ms"],
            "first_call_s": first_s, "cpu_utilisation": timing["cpu_utilisation"]}


def bench_wav2vec2(seconds: float = 10.0, threads: int = 2) -> dict:
    """wav2vec2-base real-time factor, JAX frontend vs PyTorch, ``threads`` threads each."""
    import json
    import subprocess
    import sys
    import tempfile

    import jax
    import torch
    import transformers
    from flax import nnx

    from bench_vs_torch import thread_environment
    from vasa_jax.interop.wav2vec2 import convert_hf, save_converted

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, ckpt = os.path.join(tmp, "hf"), os.path.join(tmp, "converted")
        torch.manual_seed(0)
        transformers.Wav2Vec2Model(transformers.Wav2Vec2Config()).save_pretrained(hf_dir)
        config, model = convert_hf(hf_dir)
        save_converted(config, model, ckpt, preprocessor={"do_normalize": True})
        params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        del model
        out = {"seconds": seconds, "threads": threads, "params": int(params),
               "layers": config.num_hidden_layers, "hidden_size": config.hidden_size}
        for side in ("jax", "torch"):
            env = {**os.environ, **thread_environment(threads)}
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--wav2vec2-worker", side,
                 "--hf-dir", hf_dir, "--ckpt", ckpt, "--seconds", str(seconds),
                 "--threads", str(threads)], env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"the {side} wav2vec2 worker failed:\n{proc.stderr[-3000:]}")
            out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"wav2vec2-base {side:>5}: real-time factor {out[side]['rtf']:.3f} "
                  f"({seconds:.0f} s of audio in {out[side]['ms']['median']:.0f} ms, IQR "
                  f"{out[side]['ms']['iqr']:.0f}; first call {out[side]['first_call_s']:.1f} s; "
                  f"{out[side]['cpu_utilisation']:.2f} CPUs busy)")
        out["torch_over_jax"] = out["torch"]["rtf"] / out["jax"]["rtf"]
        print(f"wav2vec2-base: PyTorch / JAX time = {out['torch_over_jax']:.2f}x")
    return out


def main():
    ap = bench_parser(__doc__, "motion.json")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", choices=("all", "wav2vec2"), default="all",
                    help="wav2vec2: only the wav2vec2-base comparison (merged into --out)")
    ap.add_argument("--threads", type=int, default=2, help="wav2vec2 comparison: threads each")
    ap.add_argument("--seconds", type=float, default=10.0, help="wav2vec2 comparison: audio")
    ap.add_argument("--wav2vec2-worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.wav2vec2_worker:
        import json

        print(json.dumps(_wav2vec2_worker(args.wav2vec2_worker, args.hf_dir, args.ckpt,
                                          args.seconds, args.threads)))
        return
    if args.only == "wav2vec2":
        import json

        result = {}
        if os.path.exists(args.out):
            with open(args.out) as f:
                result = json.load(f)
        result["wav2vec2_base"] = bench_wav2vec2(args.seconds, args.threads)
        save_json(result, args.out)
        return
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
              "sampling_rtf": bench_sampling(),
              "wav2vec2_base": bench_wav2vec2(args.seconds, args.threads)}
    save_json(result, args.out)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
