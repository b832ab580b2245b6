"""Is the trainer what slows a run? ``Trainer.fit`` against a bare loop of the same compiled step
on pre-made device batches, in one process and in two (one CPU device each, gloo collectives,
``jax.distributed``), for the ``synthtalk`` motion config; in one process also ``fit`` on
pre-made batches (the loader's share taken out); and each stage's loader throughput against
what its step consumes.

  python benchmarks/bench_trainer.py [--out benchmarks/results/trainer.json] [--data-dir DIR]
      [--steps 300] [--cores 0,1]

Data: SynthTalk ``res64_small``, the variants' own (built into ``--data-dir`` when missing,
about 80 s). ``fit``'s rate is clu's ``steps_per_sec`` (what the trainer logs),
over every log interval after the first (which holds the compile); the bare loop dispatches
the compiled step ``--steps`` times over 8 device batches made beforehand and waits once at the
end. Each process is pinned to one core of ``--cores`` (both processes of the 2-process run to
the first core when only one is given).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

from bench_common import bench_parser, cpu_model, ensure_synthtalk, save_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_EVERY = 50


def _config(stage: str, variant: str, data_dir: str, workdir: str, steps: int):
    from vasa_jax.train.run import load_config

    c = load_config(stage, variant, data_dir=data_dir, overrides=[
        f"train.steps={steps}", f"train.log_every={LOG_EVERY}",
        "train.eval_every=0", f"train.checkpoint_every={10 * steps}",
        "train.async_checkpoints=False", "num_devices=0"])
    if "image_every" in c.train:
        c.train.image_every = 0
    return c


def fit_rate(config, workdir: str, premade: bool = False) -> float:
    """steps/s of ``Trainer.fit`` (clu's steps_per_sec, every interval after the first).
    ``premade``: fit reads 8 host batches made beforehand, over and over, instead of the
    loader (what is left is the trainer's own share)."""
    import itertools

    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer, read_metrics

    task = make_task(config)
    if premade:
        it = iter(task.train_loader())
        batches = [next(it) for _ in range(8)]
        task.train_loader = lambda start_batch=0: itertools.cycle(batches)
    Trainer(task, config, workdir).fit()
    import jax

    if jax.process_index() != 0:
        return float("nan")
    rates = [r["steps_per_sec"] for r in read_metrics(workdir) if "steps_per_sec" in r]
    return statistics.mean(rates[1:]) if len(rates) > 1 else float("nan")


def bare_rate(config, steps: int) -> tuple[float, int]:
    """(steps/s of the trainer's compiled step on 8 pre-made global batches, batch size)."""
    import jax

    from vasa_jax import parallel
    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer

    task = make_task(config)
    trainer = Trainer(task, config, None)
    it = iter(task.train_loader())
    batches = [parallel.global_batch(task.device_batch(next(it)), trainer.mesh)
               for _ in range(8)]
    step = trainer.compile_step(task.device_batch(next(it)))
    state = trainer.state
    for b in batches[:2]:  # warm up
        state, m = step(state, b)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for i in range(steps):
        state, m = step(state, batches[i % len(batches)])
    jax.block_until_ready((state, m))
    return steps / (time.perf_counter() - t), int(config.data.batch_size)


def loader_rate(config, batches: int = 40) -> float:
    """Examples/s the stage's training loader delivers (host batches, after 3 warm-up ones)."""
    from vasa_jax.train.tasks import make_task

    task = make_task(config)
    task.prepare()
    it = iter(task.train_loader())
    for _ in range(3):
        task.device_batch(next(it))
    t = time.perf_counter()
    for _ in range(batches):
        task.device_batch(next(it))
    return batches * int(config.data.batch_size) / (time.perf_counter() - t)


def worker(args) -> dict:
    """In this process (one of ``args.processes``): the fit and bare-loop rates of motion
    ``synthtalk``; alone, also both stages' loader and step rates."""
    from vasa_jax.xla_cpu import prefer_fast_cpu_compiles

    prefer_fast_cpu_compiles()  # LLVM -O2, as the CLI and launch/train.py run
    if args.processes > 1:
        from vasa_jax.distributed import initialize

        initialize(f"127.0.0.1:{args.port}", args.processes, args.index)
    out = {}
    cfg = _config("motion", "synthtalk", args.data_dir, args.workdir, args.steps)
    out["fit_steps_per_s"] = fit_rate(cfg, os.path.join(args.workdir, "fit"))
    out["bare_steps_per_s"], batch = bare_rate(cfg, args.steps)
    out["global_batch"] = batch
    if args.processes == 1:
        out["fit_premade_steps_per_s"] = fit_rate(cfg, os.path.join(args.workdir, "premade"),
                                                  premade=True)
        out["motion_loader_examples_per_s"] = loader_rate(cfg)
        out["motion_step_examples_per_s"] = out["bare_steps_per_s"] * batch
        lat = _config("latent", "synthtalk64_estimator", args.data_dir, args.workdir,
                      args.steps)
        out["latent_loader_examples_per_s"] = loader_rate(lat, batches=20)
        rate, lb = bare_rate(lat, 5)
        out["latent_step_examples_per_s"] = rate * lb
        out["latent_global_batch"] = lb
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, cores: list[str], data_dir: str, steps: int, base: str) -> dict:
    port = _free_port()
    procs = []
    for i in range(processes):
        core = cores[i % len(cores)]
        wd = os.path.join(base, f"p{processes}")
        cmd = ["taskset", "-c", core, sys.executable, os.path.abspath(__file__), "--worker",
               "--processes", str(processes), "--index", str(i), "--port", str(port),
               "--data-dir", data_dir, "--workdir", wd, "--steps", str(steps)]
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=3600)
        lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not lines:
            raise SystemExit(f"worker failed:\n{err[-3000:]}")
        results.append(json.loads(lines[0][7:]))
    return results[0]


def main() -> None:
    ap = bench_parser(__doc__, "trainer.json")
    ap.add_argument("--data-dir", default=os.path.join("runs", "bench_trainer", "tfds"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cores", default="0,1")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    data_dir = os.path.abspath(args.data_dir)
    ensure_synthtalk(data_dir, "res64_small")
    base = os.path.abspath(os.path.join("runs", "bench_trainer", str(int(time.time()))))
    cores = args.cores.split(",")
    rows = {}
    for n in (1, 2):
        r = run(n, cores, data_dir, args.steps, base)
        r["fit_vs_bare"] = r["fit_steps_per_s"] / r["bare_steps_per_s"]
        if "fit_premade_steps_per_s" in r:  # the trainer's own share, without the loader's
            r["fit_premade_vs_bare"] = r["fit_premade_steps_per_s"] / r["bare_steps_per_s"]
        rows[f"{n}_process"] = r
        print(n, "process(es):", json.dumps(r), flush=True)
    save_json({"cpu": cpu_model(), "cores": args.cores, "steps": args.steps,
               "config": "motion:synthtalk on SynthTalk res64_small, one CPU device per process",
               "goal": "fit within 5 % of the bare loop (fit_vs_bare >= 0.95)",
               "results": rows}, args.out)


if __name__ == "__main__":
    main()
