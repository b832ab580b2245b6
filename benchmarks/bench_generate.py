"""Talking-face generation speed on this machine (randomly initialised models: the speed does
not depend on the weights).

- the compiled window scan against a Python loop of per-step jitted calls (the same sampler);
- real-time factor (generation seconds per second of audio; < 1 is faster than real time) at the
  ``test``, ``synthtalk`` (latent synthtalk64 + motion synthtalk_latents) and ``paper`` sizes,
  motion only and motion + decode. At ``paper`` size (512 px, a 200M-parameter decoder, 1.6
  TFLOP per frame) a whole window does not decode in reasonable time on a CPU: the motion scan
  is timed over two windows and the decoder on a batch of 2 frames, and motion + decode is
  composed from the two (labelled so);
- streaming latency: the algorithmic part (a window's audio plus the frontend's look-ahead must
  have arrived) and the compute from then to the window's frames.

  python benchmarks/bench_generate.py [--sizes test,synthtalk,paper] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from bench_common import save_json

SIZES = {"test": ("test", "test"), "synthtalk": ("synthtalk64", "synthtalk_latents"),
         "paper": ("paper", "paper")}


def _pipeline(size: str, steps: int):
    from flax import nnx

    from configs import latent as lc
    from configs import motion as mc
    from vasa_jax.latent.model import make_face_latent_model
    from vasa_jax.motion import diffusion
    from vasa_jax.motion.dit import make_motion_dit
    from vasa_jax.pipeline import Controls, TalkingFacePipeline
    from vasa_jax.motion.audio import frontend_from_config

    lcfg, mcfg = lc.get_config(SIZES[size][0]), mc.get_config(SIZES[size][1])
    mcfg.model.motion_dim = 7 + lcfg.model.dyn_dim
    latent = make_face_latent_model(lcfg.model, rngs=nnx.Rngs(0))
    motion = make_motion_dit(mcfg.model, rngs=nnx.Rngs(1))
    pipe = TalkingFacePipeline(latent, motion, frontend=frontend_from_config(mcfg.audio),
                               schedule=diffusion.make_schedule(mcfg.diffusion.schedule,
                                                                mcfg.diffusion.train_steps),
                               decode_batch=8 if size == "paper" else 0, max_seconds=3600)
    controls = Controls(gaze=(0.0, 0.0), emotion=0, steps=steps,
                        cfg=tuple(sorted(dict(mcfg.sample.cfg).items())))
    return pipe, controls


def _timed(f, *args, **kwargs):
    t = time.perf_counter()
    out = f(*args, **kwargs)
    return out, time.perf_counter() - t


def motion_only(pipe, controls, audio) -> float:
    """Seconds to generate the motion of ``audio`` (compiled scan, after a warm-up)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vasa_jax.motion.generate import generate_motion

    graphdef, state = nnx.split(nnx.merge(pipe._graphdefs[0], pipe._states[0]))
    feats = jnp.asarray(pipe.features(audio))[None]
    cond = {k: jnp.asarray(v) for k, v in controls.conditions().items()}
    f = jax.jit(lambda st, a, k: generate_motion(
        nnx.merge(graphdef, st), a, cond, k, pipe.schedule, num_steps=controls.steps,
        cfg_scales=dict(controls.scales())))
    f(state, feats, jax.random.PRNGKey(0)).block_until_ready()
    return _timed(lambda: f(state, feats, jax.random.PRNGKey(1)).block_until_ready())[1]


def python_loop(pipe, controls, audio) -> float:
    """Seconds for the same motion with a Python loop over windows and denoising steps, each
    step a separately jitted call (after a warm-up)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from vasa_jax.motion import diffusion
    from vasa_jax.motion.generate import complete_conditions, init_carry, split_windows

    model = nnx.merge(pipe._graphdefs[0], pipe._states[0])
    graphdef, state = nnx.split(model)
    ts = jnp.asarray(diffusion.sampling_timesteps(pipe.schedule.num_steps, controls.steps))
    scales = dict(controls.scales())

    @jax.jit
    def step(state, st, cond, drop):
        den = diffusion.guided_denoiser(nnx.merge(graphdef, state), scales)
        return diffusion.sampler_step(st, lambda x, t: den(x, t, cond, drop), pipe.schedule, ts)

    audio_w, valid_w = split_windows(jnp.asarray(pipe.features(audio))[None], pipe.window)
    base, drops = complete_conditions(controls.conditions(), 1)

    def run():
        carry = init_carry(model, 1)
        out = []
        for i in range(audio_w.shape[0]):
            a = jnp.where(valid_w[i][None, :, None], model.normalize_audio(audio_w[i]), 0.0)
            cond = dict(base, audio=a, audio_pre=carry.audio_pre, motion_pre=carry.motion_pre)
            drop = dict(drops, audio=jnp.zeros((1,), bool), context=jnp.full((1,), i == 0),
                        audio_frames=valid_w[i][None])
            st = diffusion.init_sampler(jax.random.fold_in(jax.random.PRNGKey(1), i),
                                        (1, pipe.window, model.motion_dim))
            for _ in range(controls.steps):
                st = step(state, st, cond, drop)
            k = pipe.context
            carry = carry.replace(motion_pre=st.x[:, -k:], audio_pre=a[:, -k:], first=False)
            out.append(st.x)
        return np.asarray(jnp.concatenate(out, axis=1))

    run()
    return _timed(run)[1]


def full(pipe, controls, source, audio) -> tuple[float, float]:
    """(first call incl. compile, steady) seconds for motion + decode of ``audio``."""
    _, first = _timed(pipe.generate, source, audio, controls)
    return first, _timed(pipe.generate, source, audio, controls)[1]


def decode_seconds_per_frame(pipe, source, frames: int = 2) -> float:
    """Seconds per frame of the stage-1 decoder alone (jitted, after a warm-up)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = pipe._graphdefs[1], pipe._states[1]
    m = jnp.zeros((frames, 7 + nnx.merge(graphdef, state).dyn_dim))
    f = jax.jit(lambda st, m: nnx.merge(graphdef, st).decode(
        jnp.repeat(source.v_app, frames, 0), jnp.repeat(source.z_id, frames, 0), m[:, :7],
        m[:, 7:]))
    f(state, m).block_until_ready()
    return _timed(lambda: f(state, m).block_until_ready())[1] / frames


def streaming_latency(pipe, controls, source, audio) -> dict:
    from vasa_jax.constants import FPS

    list(pipe.stream(source, [audio], controls))  # compile
    t = time.perf_counter()
    next(iter(pipe.stream(source, [audio], controls)))
    compute = time.perf_counter() - t
    wait = (pipe.window + pipe.frontend.context_frames) / FPS
    return {"audio_wait_s": wait, "compute_s": compute, "first_frame_latency_s": wait + compute}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="test,synthtalk,paper")
    ap.add_argument("--seconds", type=float, default=8.0, help="audio length for test/synthtalk")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "generate.json"))
    args = ap.parse_args()
    import numpy as np

    from data_pipeline.synthtalk.generate import generate_clip

    speech = generate_clip(0, 950, 0, 200, 64)["audio"]
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "sizes": {}}
    if os.path.exists(args.out):  # keep the sizes this run does not measure
        with open(args.out) as f:
            result["sizes"] = json.load(f).get("sizes", {})
    for size in args.sizes.split(","):
        for steps in ((50,) if size == "paper" else (50, 10)):
            pipe, controls = _pipeline(size, steps)
            seconds = args.seconds if size != "paper" else 2 * pipe.window / 25
            audio = np.resize(speech, int(seconds * 16000)).astype(np.float32)
            crop = np.zeros((pipe.resolution, pipe.resolution, 3), np.uint8) + 128
            source = pipe.prepare_source(crop, detect=False)
            row = {"audio_s": seconds, "steps": steps, "window": pipe.window,
                   "resolution": pipe.resolution,
                   "motion_rtf": motion_only(pipe, controls, audio) / seconds}
            if size != "paper" and steps == 50:
                loop = python_loop(pipe, controls, audio) / seconds
                row["python_loop_rtf"] = loop
                row["scan_speedup_over_loop"] = loop / row["motion_rtf"]
            if size == "paper":  # composed: the decoder is timed on 2 frames
                row["decode_s_per_frame"] = decode_seconds_per_frame(pipe, source)
                row["motion_decode_rtf_composed"] = row["motion_rtf"] + 25 * row[
                    "decode_s_per_frame"]
                row["motion_decode_rtf"] = row["motion_decode_rtf_composed"]
            else:
                first, steady = full(pipe, controls, source, audio)
                row.update(compile_s=first - steady, motion_decode_rtf=steady / seconds)
                row["streaming"] = streaming_latency(pipe, controls, source, audio)
            result["sizes"][f"{size}_{steps}steps"] = row
            save_json(result, args.out)
            print(f"{size:9s} {steps:2d} steps: motion RTF {row['motion_rtf']:.3f}, "
                  f"motion+decode RTF {row['motion_decode_rtf']:.3f}"
                  + (" (composed)" if size == "paper" else "")
                  + (f", scan {row['scan_speedup_over_loop']:.1f}x faster than the "
                     f"per-step loop" if "scan_speedup_over_loop" in row else "")
                  + (f", streaming first frames after {row['streaming']['first_frame_latency_s']:.2f}"
                     f" s ({row['streaming']['audio_wait_s']:.2f} s of audio + "
                     f"{row['streaming']['compute_s']:.2f} s compute)" if "streaming" in row
                     else ""), flush=True)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
