"""Helpers the benchmark scripts share: their command-line parser, the machine's measured matmul
peak, its CPU model, and XLA's cost analysis of a compiled function. (Imported by the scripts
beside it.)"""

from __future__ import annotations

import argparse
import os
import platform
import time

from vasa_jax.atomic import write_json

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bench_parser(doc: str, result_file: str) -> argparse.ArgumentParser:
    """A benchmark script's parser: its docstring ``doc`` as the help text, and ``--out`` (where
    its figures go) defaulting to ``benchmarks/results/<result_file>``."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(RESULTS_DIR, result_file))
    return ap


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Measured fp32 GFLOP/s of (n x n) @ (n x n) matmuls under jit on the default device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def xla_cost(compiled) -> dict[str, float]:
    """{"flops", "bytes_accessed"} from a compiled function's XLA cost analysis."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return {"flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def save_json(result: dict, path: str) -> None:
    """Write a benchmark's figures (creating the folder) through a temporary file and a rename,
    so a reader never sees a half-written file, and say where."""
    write_json(path, result)
    print(f"wrote {path}")


def ensure_synthtalk(data_dir: str, config: str = "res64_tiny") -> None:
    """Build SynthTalk ``config`` into ``data_dir`` unless it is there."""
    from data_pipeline.synthtalk.synthtalk_dataset_builder import Synthtalk

    builder = Synthtalk(config=config, data_dir=data_dir, workers=1)
    if not os.path.isdir(builder.data_dir):
        print(f"building SynthTalk {config} in {data_dir} ...", flush=True)
        builder.download_and_prepare()
