"""Compile time on this CPU: the trainer's state initialisation and train step for the `test`
configs of both stages, at XLA's default and at each LLVM optimisation level its CPU backend
offers.

  python benchmarks/bench_compile.py [--out benchmarks/results/compile.json] [--data-dir DIR]
      [--levels default,2,1,0] [--stages latent,motion]

Each (stage, level) runs in its own process (XLA reads ``--xla_backend_optimization_level``
once, at start-up), pinned to one core when it can be, with the persistent compile cache off,
on one device, on SynthTalk ``res64_tiny`` (built into ``--data-dir`` when missing; stage 2
reads its stage-1 latents on the fly). Per row: seconds to build the trainer (model, optimiser
and EMA initialised by one jitted function), to lower and to compile the train step, the
optimised HLO's instruction count, and the median step time of 3 calls after one warm-up.

``default`` leaves ``XLA_FLAGS`` without a level (what XLA does unless told otherwise). CPU-only
runs of this project use level 2 (``vasa_jax/xla_cpu.py``): these figures are why.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from bench_common import bench_parser, cpu_model, ensure_synthtalk, save_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(stage: str, data_dir: str) -> dict:
    """In this process: build the ``test`` trainer of ``stage``, compile its step, time it."""
    import re

    import jax

    from configs import latent, motion
    from vasa_jax import parallel
    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer

    c = (latent if stage == "latent" else motion).get_config("test")
    c.data.data_dir, c.num_devices = data_dir, 1
    t0 = time.perf_counter()
    task = make_task(c)
    trainer = Trainer(task, c, os.path.join(data_dir, "..", f"bench_compile_{stage}"))
    t1 = time.perf_counter()
    batch = task.device_batch(next(iter(task.train_loader())))
    step = trainer.compile_step(batch)
    gb = parallel.global_batch(batch, trainer.mesh)
    t2 = time.perf_counter()
    lowered = step.lower(trainer.state, gb)
    t3 = time.perf_counter()
    compiled = lowered.compile()
    t4 = time.perf_counter()
    hlo = compiled.as_text()
    state, metrics = compiled(trainer.state, gb)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        state, metrics = compiled(state, gb)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    return {"trainer_init_s": round(t1 - t0, 2), "step_lower_s": round(t3 - t2, 2),
            "step_compile_s": round(t4 - t3, 2),
            "hlo_instructions": len(re.findall(r"^\s+\S+ = ", hlo, flags=re.MULTILINE)),
            "step_s_median": round(statistics.median(times), 3)}


def main() -> None:
    ap = bench_parser(__doc__, "compile.json")
    ap.add_argument("--data-dir", default=os.path.join("runs", "bench_compile", "tfds"))
    ap.add_argument("--levels", default="default,2,1,0")
    ap.add_argument("--stages", default="latent,motion")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "DATA_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(*args.child)), flush=True)
        return
    data_dir = os.path.abspath(args.data_dir)
    ensure_synthtalk(data_dir)
    pin = ["taskset", "-c", "0"] if sys.platform == "linux" and _has("taskset") else []
    rows = []
    for stage in args.stages.split(","):
        for level in args.levels.split(","):
            env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false",
                       XLA_FLAGS="" if level == "default"
                       else f"--xla_backend_optimization_level={level}")
            out = subprocess.run(pin + [sys.executable, os.path.abspath(__file__), "--child",
                                        stage, data_dir],
                                 env=env, capture_output=True, text=True, check=False)
            lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not lines:
                raise SystemExit(f"{stage} at level {level} failed:\n{out.stderr[-3000:]}")
            row = {"stage": stage, "variant": "test", "llvm_opt_level": level,
                   **json.loads(lines[-1][len("RESULT "):])}
            print(row, flush=True)
            rows.append(row)
    save_json({"date": datetime.date.today().isoformat(), "cpu": cpu_model(),
               "python": platform.python_version(), "jax": _jax_version(),
               "devices": 1, "rows": rows}, args.out)


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


def _jax_version() -> str:
    import jax

    return jax.__version__


if __name__ == "__main__":
    main()
