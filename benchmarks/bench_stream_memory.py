"""Peak memory of ``vasa-jax generate --stream`` against the audio's length (issue 20): the
streaming command writes each window's frames to the output as they come (watermarked per
window; the file signed and renamed at the end), so its peak RSS should not grow with the audio,
while offline generation holds every frame.

Each run is the real command (``vasa_jax.cli.main(["generate", ...])``, default output size
256 px, watermark and C2PA on) in a fresh process, whose peak RSS is its ``VmHWM`` (the
high-water mark since exec; ``ru_maxrss`` would include the parent's memory copied by fork). The models are the smallest real trained pair: the ``test`` variants
trained for 2 steps on SynthTalk res64_tiny (as ``tests/conftest.py:generation_workdirs`` does),
built once under ``--cache``, or an existing pair given with ``--workdirs``. The speech is
SynthTalk's (8 s, repeated to length); the photo a SynthTalk render.

  taskset -c 1 python benchmarks/bench_stream_memory.py [--seconds 10,120] [--offline]
      [--workdirs LATENT MOTION] [--cache DIR] [--out FILE]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from bench_common import bench_parser, cpu_model, save_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_pair(cache: str) -> tuple[str, str]:
    """(stage-1, stage-2) workdirs of the ``test`` variants, 2 steps each on SynthTalk
    res64_tiny (stage 2 on that stage 1's latents); reused when already under ``cache``."""
    from configs import latent as latent_configs
    from configs import motion as motion_configs
    from data_pipeline.latents import latents_dataset_builder as lb
    from data_pipeline.synthtalk.synthtalk_dataset_builder import Synthtalk
    from vasa_jax.train.latent_task import LatentTask
    from vasa_jax.train.motion_task import MotionTask
    from vasa_jax.train.trainer import Trainer

    stage1, stage2 = os.path.join(cache, "stage1"), os.path.join(cache, "stage2")
    if os.path.isdir(os.path.join(stage2, "checkpoints")):
        return stage1, stage2
    data_dir = os.path.join(cache, "tfds")
    Synthtalk(config="res64_tiny", data_dir=data_dir, workers=1).download_and_prepare()
    c = latent_configs.get_config("test")
    c.data.data_dir = data_dir
    c.train.steps, c.train.async_checkpoints, c.train.eval_every = 2, False, 0
    Trainer(LatentTask(c), c, stage1).fit()
    m = motion_configs.get_config("test_latents")
    latents = os.path.join(cache, "latents")
    m.data.config = lb.build_latents("synthtalk", "res64_tiny", stage1, data_dir=latents,
                                     source_data_dir=data_dir, audio=dict(m.audio))
    m.data.data_dir = latents
    m.train.steps, m.train.async_checkpoints = 2, False
    Trainer(MotionTask(m), m, stage2).fit()
    return stage1, stage2


def write_inputs(folder: str, seconds_list) -> tuple[str, dict[float, str]]:
    """(photo path, {seconds: speech wav path})."""
    import av
    import numpy as np
    from PIL import Image

    from data_pipeline.synthtalk.generate import generate_clip

    os.makedirs(folder, exist_ok=True)
    clip = generate_clip(0, 950, 1, 200, 256)
    photo = os.path.join(folder, "face.png")
    Image.fromarray(clip["frames"][0]).save(photo)
    speech = {}
    for s in seconds_list:
        path = os.path.join(folder, f"speech_{s:g}s.wav")
        audio = np.resize(clip["audio"], int(s * 16000)).astype(np.float32)
        with av.open(path, "w") as out:
            st = out.add_stream("pcm_s16le", rate=16000)
            st.layout = "mono"
            frame = av.AudioFrame.from_ndarray(
                np.round(audio * 32767).astype(np.int16)[None], format="s16", layout="mono")
            frame.sample_rate = 16000
            for p in list(st.encode(frame)) + list(st.encode()):
                out.mux(p)
        speech[s] = path
    return photo, speech


# The command in a fresh process, which then prints its peak RSS: VmHWM, the high-water mark of
# the process's own memory since exec (ru_maxrss would also count the parent's memory that the
# fork copied before exec: the parent may hold gigabytes after training).
CHILD = """
import json, sys
from vasa_jax import cli
code = cli.main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"code": code, "peak_rss_kb": int(hwm)}))
"""


def run(argv: list[str], env: dict) -> tuple[int, float, float, str]:
    """(exit code, peak RSS in MB, wall seconds, stderr tail) of ``vasa-jax argv`` run in a
    fresh process."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"code"')]
    if proc.returncode or not lines:
        return proc.returncode or 1, 0.0, wall, proc.stderr[-2000:]
    got = json.loads(lines[-1])
    return got["code"], got["peak_rss_kb"] / 1024, wall, proc.stderr[-2000:]


def main():
    ap = bench_parser(__doc__, "stream_memory.json")
    ap.add_argument("--seconds", default="10,120", help="audio lengths to compare")
    ap.add_argument("--offline", action="store_true",
                    help="also measure offline generation (holds every frame) for contrast")
    ap.add_argument("--workdirs", nargs=2, metavar=("LATENT", "MOTION"),
                    help="an existing trained pair (default: train the test variants)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                    "vasa_jax_bench_stream_memory"),
                    help="where the trained pair, the inputs and the outputs go")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps (memory does not "
                    "depend on them)")
    args = ap.parse_args()
    seconds_list = [float(s) for s in args.seconds.split(",")]
    latent, motion = args.workdirs or train_pair(args.cache)
    photo, speech = write_inputs(os.path.join(args.cache, "inputs"), seconds_list)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               VASA_JAX_C2PA_DIR=os.path.join(args.cache, "c2pa"))
    result = {"machine": {"cpu": cpu_model(), "cpus": os.cpu_count(),
                          "affinity": sorted(os.sched_getaffinity(0)),
                          "platform": platform.platform()},
              "workdirs": {"latent": latent, "motion": motion}, "steps": args.steps,
              "output_size": 256, "runs": {}}
    modes = ["stream"] + (["offline"] if args.offline else [])
    for mode in modes:
        for s in seconds_list:
            out = os.path.join(args.cache, "out", f"{mode}_{s:g}s.mp4")
            argv = ["generate", "--image", photo, "--audio", speech[s], "--out", out,
                    "--latent-workdir", latent, "--motion-workdir", motion,
                    "--steps", str(args.steps), "--overwrite", "--max-seconds", "3600"]
            argv += ["--stream"] if mode == "stream" else []
            code, rss, wall, err = run(argv, env)
            if code != 0:
                raise SystemExit(f"{mode} {s:g} s failed (exit {code}):\n{err}")
            row = {"audio_s": s, "peak_rss_mb": round(rss, 1), "wall_s": round(wall, 1),
                   "output_mb": round(os.path.getsize(out) / 2**20, 2)}
            result["runs"][f"{mode}_{s:g}s"] = row
            print(f"{mode:8s} {s:6.0f} s of audio: peak RSS {rss:7.1f} MB, {wall:6.1f} s, "
                  f"output {row['output_mb']} MB", flush=True)
        lo, hi = (result["runs"][f"{mode}_{s:g}s"] for s in (min(seconds_list),
                                                             max(seconds_list)))
        growth = hi["peak_rss_mb"] - lo["peak_rss_mb"]
        result[f"{mode}_growth_mb"] = round(growth, 1)
        result[f"{mode}_growth_mb_per_audio_minute"] = round(
            60 * growth / (hi["audio_s"] - lo["audio_s"]), 1)
        print(f"{mode}: peak RSS grows {growth:.1f} MB from {lo['audio_s']:g} s to "
              f"{hi['audio_s']:g} s of audio", flush=True)
    save_json(result, args.out)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
