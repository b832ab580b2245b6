"""Real-time talking faces on this machine: low-latency streaming (stride S) against the speech
it must keep pace with, its quality against offline generation, and the web app's WebSocket
under concurrent clients.

- latency (``synthtalk`` size: the 64 px stage 1 + the SynthTalk MotionDiT, randomly
  initialised: the speed does not depend on the weights): speech arrives in 40 ms chunks at
  real time; for S in {W, 25, 10, 5, 3} the time from the speech's start to the first frame (the
  S + look-ahead frames of audio it must wait for, then the compute), and the steady frames/s
  with all audio at hand, against the 25 fps the speech needs; at the motion config's denoising
  steps and at 10.
- quality (a MotionDiT trained on SynthTalk's ground-truth motion, ``--motion-workdir``):
  jaw r, AV offset and ΔP (the evaluation table's columns) of the motion low-latency streaming
  commits, against offline (S = W), on held-out clips.
- concurrency: 1, 2 and 4 WebSocket clients streaming at once (one slot each) at S = 10.

  python benchmarks/bench_serve.py --motion-workdir runs/serve_bench/motion
      [--data-dir DIR] [--clips 64] [--parts latency,quality,quality10,concurrency] [--out FILE]
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import numpy as np

from bench_common import bench_parser, cpu_model, save_json
from bench_generate import _pipeline

STRIDES = ("W", 25, 10, 5, 3)  # the issue asks for W, 25, 10, 5; 3 shows where 300 ms falls
CHUNK = 640  # 40 ms at 16 kHz: one video frame


def _speech(seconds: float) -> np.ndarray:
    from data_pipeline.synthtalk.generate import generate_clip

    clip = generate_clip(0, 950, 0, 75, 64)["audio"].astype(np.float32)
    n = int(seconds * 16000) // CHUNK * CHUNK
    return np.tile(clip, 1 + n // clip.size)[:n]


def _realtime_chunks(audio: np.ndarray, t0: float):
    """40 ms chunks, each released when it would have been spoken (from ``t0``)."""
    for i in range(audio.size // CHUNK):
        wait = t0 + (i + 1) * CHUNK / 16000 - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        yield audio[i * CHUNK:(i + 1) * CHUNK]


def latency(steps_list, seconds: float = 6.0) -> dict:
    from vasa_jax.pipeline import Controls

    audio = _speech(seconds)
    rows = {}
    for steps in steps_list:
        pipe, controls = _pipeline("synthtalk", steps)
        controls = Controls(**{**controls.__dict__, "steps": steps})
        source = pipe.prepare_source(np.full((pipe.resolution,) * 2 + (3,), 128, np.uint8),
                                     detect=False)
        ctx = pipe.frontend.context_frames
        for s in STRIDES:
            stride = pipe.window if s == "W" else s
            for _ in pipe.stream(source, [audio[:CHUNK * 2]], controls, stride=stride):
                pass  # compile
            t = time.perf_counter()
            n = sum(len(f) for f in pipe.stream(source, [audio], controls, stride=stride))
            fps = n / (time.perf_counter() - t)
            t0 = time.perf_counter()
            arrivals = []
            for frames in pipe.stream(source, _realtime_chunks(audio, t0), controls,
                                      stride=stride):
                arrivals.append((time.perf_counter() - t0, len(frames)))
            first = arrivals[0][0]
            wait = (stride + ctx) * CHUNK / 16000
            done = sum(k for _, k in arrivals)
            # behind: how late the last frame came after its audio ended (a stream that keeps
            # up stays near the look-ahead + one window's compute)
            behind = arrivals[-1][0] - seconds
            key = f"steps{steps}|S={s}"
            rows[key] = {"steps": steps, "stride": stride, "window": pipe.window,
                         "first_frame_seconds": first, "audio_wait_seconds": wait,
                         "compute_seconds": first - wait, "frames_per_second": fps,
                         "keeps_up": fps >= 25.0, "frames": done,
                         "last_frame_after_speech_end_seconds": behind,
                         "goal_first_frame_300ms": first <= 0.3}
            print(key, json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                   for k, v in rows[key].items()}), flush=True)
    return rows


def quality(motion_workdir: str, data_dir: str | None, clips: int, steps: int,
            strides=STRIDES) -> dict:
    from data_pipeline.views import read_clips
    from vasa_jax.eval.motion_eval import generate_for_clips, motion_report, real_row
    from vasa_jax.models import restore_model
    from vasa_jax.motion import diffusion

    run = restore_model(motion_workdir, task="motion", what="stage-2 (motion) run")
    c = run.config
    if data_dir:
        c.data.data_dir = data_dir
    held = read_clips(c, "test", clips, audio_features=True)
    schedule = diffusion.make_schedule(c.diffusion.schedule, c.diffusion.train_steps)
    scales = dict(c.sample.cfg)
    rows = {"real": real_row(held)}
    for s in strides:
        stride = None if s == "W" else s
        gen = generate_for_clips(run.model, held, schedule, num_steps=steps,
                                 sampler=c.sample.sampler, cfg_scales=scales, stride=stride)
        rows[f"S={s}"] = motion_report(gen, held)
        print(f"S={s}", json.dumps({k: round(v, 4) for k, v in rows[f"S={s}"].items()}),
              flush=True)
    off = rows["S=W"]["jaw_r"]
    for s in strides[1:]:
        rows[f"S={s}"]["jaw_r_minus_offline"] = rows[f"S={s}"]["jaw_r"] - off
        rows[f"S={s}"]["goal_jaw_r_within_0.05"] = abs(rows[f"S={s}"]["jaw_r"] - off) <= 0.05
    return {"workdir": motion_workdir, "checkpoint_step": run.step, "clips": len(held),
            "steps": steps, "cfg": scales, "rows": rows}


def concurrency(clients_list, stride: int = 10, seconds: float = 4.0, steps: int = 10) -> dict:
    import base64
    import io
    import socket

    import uvicorn
    import websockets
    from PIL import Image

    from vasa_jax.pipeline import Controls
    from vasa_jax.serve.app import build_server
    from vasa_jax.serve.service import TalkingFaceService

    audio = _speech(seconds)
    from data_pipeline.synthtalk.generate import generate_clip

    buf = io.BytesIO()
    Image.fromarray(generate_clip(0, 950, 0, 1, 256)["frames"][0]).save(buf, "PNG")
    photo = base64.b64encode(buf.getvalue()).decode()
    rows = {}
    for n in clients_list:
        pipe, controls = _pipeline("synthtalk", steps)
        # what a client that sends only steps gets (no gaze / emotion): compiled at start-up
        pipe.defaults = Controls(steps=steps, cfg=controls.cfg)
        service = TalkingFaceService(pipe, max_concurrent=n, warm_strides=(stride,))
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        srv = uvicorn.Server(uvicorn.Config(build_server(service), host="127.0.0.1", port=port,
                                            log_level="warning"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        while not srv.started:
            time.sleep(0.1)

        async def client():
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/stream",
                                          max_size=None) as ws:
                await ws.send(json.dumps({"image": photo, "stride": stride, "steps": steps}))
                assert json.loads(await ws.recv())["event"] == "ready"
                t0 = time.perf_counter()

                async def send():
                    for i in range(audio.size // CHUNK):
                        wait = t0 + (i + 1) * CHUNK / 16000 - time.perf_counter()
                        if wait > 0:
                            await asyncio.sleep(wait)
                        await ws.send(audio[i * CHUNK:(i + 1) * CHUNK].astype("<f4").tobytes())
                    await ws.send(json.dumps({"event": "end"}))

                sender = asyncio.create_task(send())
                first, frames = None, 0
                while True:
                    msg = await ws.recv()
                    if isinstance(msg, bytes):
                        first = first or time.perf_counter() - t0
                        frames += stride
                    else:
                        break
                await sender
                return first, time.perf_counter() - t0, json.loads(msg)["frames"]

        async def all_clients():
            return await asyncio.gather(*[client() for _ in range(n)])

        asyncio.run(client())  # one session first: the face detector's and server's first use
        out = asyncio.run(all_clients())
        srv.should_exit = True
        thread.join(timeout=30)
        service.close()
        total_frames = sum(f for _, _, f in out)
        wall = max(t for _, t, _ in out)
        rows[f"{n}_clients"] = {"clients": n, "stride": stride, "steps": steps,
                                "first_frame_seconds": [round(f, 3) for f, _, _ in out],
                                "mean_first_frame_seconds": float(np.mean([f for f, _, _ in out])),
                                "aggregate_frames_per_second": total_frames / wall,
                                "per_client_frames_per_second": total_frames / wall / n,
                                "speech_seconds": seconds}
        print(f"{n} clients", json.dumps(rows[f"{n}_clients"]), flush=True)
    return rows


def main() -> None:
    ap = bench_parser(__doc__, "serve.json")
    ap.add_argument("--motion-workdir", default="runs/serve_bench/motion")
    ap.add_argument("--data-dir", default="runs/bench_trainer/tfds")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--parts", default="latency,quality,quality10,concurrency")
    args = ap.parse_args()
    parts = args.parts.split(",")
    out = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            out = json.load(f)
    out.update(cpu=cpu_model(), date=time.strftime("%Y-%m-%d"),
               note="2 CPU cores; synthtalk size = latent synthtalk64 (64 px) + motion "
                    "synthtalk_latents; real-time speech in 40 ms chunks; goals: first frame "
                    "<= 300 ms after the speech starts, jaw r within 0.05 of offline")
    if "latency" in parts:
        out["latency"] = latency((50, 10))
        save_json(out, args.out)
    if "quality" in parts:
        out["quality"] = quality(args.motion_workdir, args.data_dir, args.clips, 50)
        save_json(out, args.out)
    if "quality10" in parts:  # the steps the real-time rows need on this CPU
        out["quality_steps10"] = quality(args.motion_workdir, args.data_dir, args.clips, 10,
                                         strides=("W", 5, 3))
        save_json(out, args.out)
    if "concurrency" in parts:
        out["concurrency"] = concurrency((1, 2, 4))
        save_json(out, args.out)


if __name__ == "__main__":
    main()
