"""Data-path speed: SynthTalk generation, the TFDS build, the grain loader, and the VoxCeleb2
builder.

  python benchmarks/bench_data.py [--out benchmarks/results/data.json] [--data-dir DIR]
  python benchmarks/bench_data.py --voxceleb2-only   # just the VoxCeleb2 part, merged into --out

Prints and writes JSON with:
  generation_clips_per_s.{64,128,256}  3-s clips (75 frames, audio, render) in one process
  build_1000_clips_64px_s              `vasa-jax data build synthtalk --config res64_small` wall time
  loader_examples_per_s.workers_{0,2}  batches of 32 windows of 60 frames at 64 px
  voxceleb2_build                      clips/s of the voxceleb2 builder (res256: 3-s clips at
                                       256 px) on a fake download of 100 mp4s (224 px 25 fps
                                       H.264 + 16 kHz mono AAC, 6.2 s each; 200 clips), built
                                       without Beam and with Beam's DirectRunner (in memory,
                                       one worker)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time

from bench_common import bench_parser, save_json

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


def bench_voxceleb2(workdir: str) -> dict:
    """Plain and DirectRunner builds of a 200-clip fake VoxCeleb2 download (see the docstring)."""
    from data_pipeline.voxceleb2 import fake_tree
    from data_pipeline.voxceleb2 import voxceleb2_dataset_builder as vb

    root = os.path.join(workdir, "voxceleb2_download")
    t = time.perf_counter()
    tree = fake_tree.write_fake_tree(root, dev_identities=9, test_identities=1,
                                     videos_per_identity=5, utterances_per_video=2, seconds=6.2,
                                     fps=25, size=224, audio_rate=16000, channels=1,
                                     clip_frames=75, extras=False)
    clips = sum(tree.clips.values())
    print(f"fake VoxCeleb2 download: {tree.num_files} mp4s, {clips} clips expected, written in "
          f"{time.perf_counter() - t:.1f} s")
    cfg = vb.make_config(256, 75)
    out = {"source": {"files": tree.num_files, "seconds_per_file": 6.2, "size": 224, "fps": 25,
                      "audio": "AAC 16 kHz mono"},
           "config": cfg.name, "clips": clips}
    modes = {"plain": None,
             "beam_direct_runner": ["--direct_num_workers=1", "--direct_running_mode=in_memory"]}
    for mode, flags in modes.items():
        load = os.getloadavg()[0]
        t = time.perf_counter()
        _, summary = vb.build_voxceleb2(root, cfg, data_dir=os.path.join(workdir, mode),
                                        beam_flags=flags)
        dt = time.perf_counter() - t
        assert summary["clips_written"] == clips, summary
        out[mode] = {"seconds": dt, "clips_per_s": clips / dt,
                     "video_seconds_per_s": summary["hours_of_video"] * 3600 / dt,
                     "load_average_before": load}
        print(f"voxceleb2 build ({mode}): {clips} clips in {dt:.1f} s = {clips / dt:.2f} "
              f"clips/s ({out[mode]['video_seconds_per_s']:.1f} s of video per s; "
              f"1-min load average before: {load:.1f})")
    return out


def main():
    ap = bench_parser(__doc__, "data.json")
    ap.add_argument("--data-dir", default=None, help="default: a temporary directory")
    ap.add_argument("--workers", type=int, default=0, help="build workers (0: all cores)")
    ap.add_argument("--voxceleb2-only", action="store_true",
                    help="run only the VoxCeleb2 builder part; its figures replace that key of "
                         "an existing --out file (the other figures are kept)")
    args = ap.parse_args()

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = data_dir = tempfile.mkdtemp(prefix="bench_data_")
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version()}
    if args.voxceleb2_only:
        try:
            result = {}
            if os.path.exists(args.out):
                with open(args.out) as f:
                    result = json.load(f)
            result["voxceleb2_build"] = {"machine": machine, "date": time.strftime("%Y-%m-%d"),
                                         **bench_voxceleb2(data_dir)}
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        save_json(result, args.out)
        return
    try:
        result = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "generation_clips_per_s": bench_generation(),
            "build_1000_clips_64px_s": bench_build(data_dir, args.workers),
            "loader_examples_per_s": {f"workers_{w}": bench_loader(data_dir, w) for w in (0, 2)},
            "voxceleb2_build": {"machine": machine, "date": time.strftime("%Y-%m-%d"),
                                **bench_voxceleb2(data_dir)},
        }
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    save_json(result, args.out)


if __name__ == "__main__":
    main()
