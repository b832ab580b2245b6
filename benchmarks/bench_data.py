"""Data-path speed: SynthTalk generation, the TFDS build, and the grain loader.

  python benchmarks/bench_data.py [--out benchmarks/results/data.json] [--data-dir DIR]

Prints and writes JSON with:
  generation_clips_per_s.{64,128,256}  3-s clips (75 frames, audio, render) in one process
  build_1000_clips_64px_s              `vasa-jax data build synthtalk --config res64_small` wall time
  loader_examples_per_s.workers_{0,2}  batches of 32 windows of 60 frames at 64 px
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

from bench_common import save_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def bench_generation(resolutions=(64, 128, 256), clips=8) -> dict[str, float]:
    from data_pipeline.synthtalk.generate import generate_clip

    out = {}
    for r in resolutions:
        generate_clip(0, 0, 0, 75, r)  # compile
        t = time.perf_counter()
        for i in range(clips):
            generate_clip(0, i, 1, 75, r)
        out[str(r)] = clips / (time.perf_counter() - t)
        print(f"generation {r:>3} px: {out[str(r)]:.2f} clips/s (one process)")
    return out


def bench_build(data_dir: str, workers: int) -> float:
    from data_pipeline.synthtalk.synthtalk_dataset_builder import Synthtalk

    t = time.perf_counter()
    Synthtalk(config="res64_small", data_dir=data_dir, workers=workers).download_and_prepare()
    dt = time.perf_counter() - t
    print(f"TFDS build of 1,000 clips at 64 px: {dt:.1f} s ({workers or 'all'} workers)")
    return dt


def bench_loader(data_dir: str, workers: int, batches: int = 20) -> float:
    from data_pipeline.loader import LoaderConfig, make_loader

    cfg = LoaderConfig(config="res64_small", data_dir=data_dir, num_frames=60, batch_size=32,
                       worker_count=workers, worker_buffer_size=2)
    it = iter(make_loader(cfg))
    next(it)  # start-up (worker processes) is not throughput
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * 32 / (time.perf_counter() - t)
    del it
    print(f"loader, {workers} workers: {rate:.1f} examples/s (batch 32, T=60, 64 px)")
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "data.json"))
    ap.add_argument("--data-dir", default=None, help="default: a temporary directory")
    ap.add_argument("--workers", type=int, default=0, help="build workers (0: all cores)")
    args = ap.parse_args()

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = data_dir = tempfile.mkdtemp(prefix="bench_data_")
    try:
        result = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "generation_clips_per_s": bench_generation(),
            "build_1000_clips_64px_s": bench_build(data_dir, args.workers),
            "loader_examples_per_s": {f"workers_{w}": bench_loader(data_dir, w) for w in (0, 2)},
        }
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    save_json(result, args.out)


if __name__ == "__main__":
    main()
