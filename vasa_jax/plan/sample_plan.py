"""Plan generation on one TPU chip: compile one window of the sampler (every denoising step of
MotionDiT with multi-condition CFG, then the stage-1 decoder on the window's W frames; the
program streaming runs, ``TalkingFacePipeline.lower_window``) for a chip of the slice, with
both models built shape-first at the given variants, and report whether it fits and its memory.

XLA's cost analysis counts each loop body once (the denoising loop, the decode map), so the
window's cost is built from its two loop bodies compiled on their own
(``TalkingFacePipeline.lower_window_parts``): ``steps`` guided MotionDiT calls plus
ceil(W / decode batch) decoder calls. Each part's time is projected as a roofline,
max(FLOPs / (peak bf16 rate x MFU), bytes accessed / HBM bandwidth), at a stated MFU (an
assumption, printed beside the figure); frames/s = W / window time. fp32 matmuls count at the
bf16 rate: JAX's default precision on TPU runs them as one bf16 pass.

VASA-1 reports 45 fps offline (40 fps streaming, 170 ms first-frame latency) at 512 x 512 on
one RTX 4090 (Xu et al. 2024, section 4.2).
"""

from __future__ import annotations

import time
from typing import Any

import jax
from flax import nnx

from vasa_jax.plan.chips import Chip, GiB, libtpu_version, topology_devices, tpu_compiles
from vasa_jax.plan.train_plan import DEFAULT_MFU, compiled_figures, overflow

VASA1_FPS = {"offline": 45.0, "streaming": 40.0, "gpu": "RTX 4090", "resolution": 512}


def _stage_configs(latent_variant: str, motion_variant: str):
    from vasa_jax.latent.warp import POSE_DIM
    from vasa_jax.motion.audio import frontend_from_config
    from vasa_jax.train.motion_task import fill_audio_dims
    from vasa_jax.train.run import load_config

    lc = load_config("latent", latent_variant)
    mc = load_config("motion", motion_variant)
    mc.model.motion_dim = POSE_DIM + lc.model.dyn_dim  # stage 2 generates stage 1's latents
    frontend = frontend_from_config(mc.audio)
    fill_audio_dims(mc, frontend)
    return lc, mc, frontend


def plan_sampler(slice_name: str, *, latent_variant: str = "paper",
                 motion_variant: str = "paper", steps: int = 0, decode_batch: int = 0,
                 mfu: float = DEFAULT_MFU) -> dict[str, Any]:
    """Compile one generation window for the first chip of ``slice_name``; ``steps`` denoising
    steps (0: the motion config's ``sample.steps``), CFG scales of its ``sample.cfg``; then
    its two loop bodies alone, for a projected frame rate at ``mfu``."""
    from jax.sharding import SingleDeviceSharding

    from vasa_jax import models
    from vasa_jax.motion.diffusion import make_schedule
    from vasa_jax.pipeline import Controls, TalkingFacePipeline

    chip, devices = topology_devices(slice_name)
    lc, mc, frontend = _stage_configs(latent_variant, motion_variant)
    latent = nnx.eval_shape(lambda: models.build_model(lc))
    motion = nnx.eval_shape(lambda: models.build_model(mc))
    pipe = TalkingFacePipeline(latent, motion, frontend=frontend, decode_batch=decode_batch,
                               schedule=make_schedule(mc.diffusion.schedule,
                                                      mc.diffusion.train_steps))
    controls = Controls(steps=int(steps or mc.sample.steps), sampler=str(mc.sample.sampler),
                        cfg=tuple(sorted(dict(mc.sample.cfg).items())))
    n = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))  # noqa: E731
    report = {
        "slice": slice_name, "chip": chip.generation, "libtpu": libtpu_version(),
        "latent": f"latent:{latent_variant}",
        "motion": f"motion:{motion_variant}", "resolution": pipe.resolution,
        "window": pipe.window, "steps": controls.steps, "cfg": dict(controls.cfg),
        "decode_batch": decode_batch, "latent_params": n(nnx.state(latent, nnx.Param)),
        "motion_params": n(nnx.state(motion, nnx.Param)),
        "dtypes": {"latent": lc.model.dtype, "motion": mc.model.dtype},
        "hbm_capacity_bytes": chip.hbm_bytes,
        "vasa1_reported": VASA1_FPS}
    t0 = time.time()
    try:
        with tpu_compiles():
            compiled = pipe.lower_window(controls,
                                         sharding=SingleDeviceSharding(devices[0])).compile()
    except Exception as e:  # noqa: BLE001 - XLA raises JaxRuntimeError for an HBM overflow
        need = overflow(e)
        if need is None:
            raise
        report.update(fits=False, compile_seconds=time.time() - t0, temp_bytes=need[0],
                      hbm_available_bytes=need[1],
                      advice="decode fewer frames at once (--decode-batch, e.g. 2)")
        return report
    seconds = time.time() - t0
    fig = compiled_figures(compiled)
    report.update(
        compile_seconds=seconds, argument_bytes=fig["argument_bytes"],
        temp_bytes=fig["temp_bytes"], peak_bytes=fig["peak_bytes"],
        fits=fig["peak_bytes"] <= chip.hbm_bytes,
        # XLA's cost analysis counts a loop body once: the denoising loop and the decode map
        # run many times, so this is a floor; the projection below is built from the bodies.
        flops_loop_bodies_once=fig["flops"])
    with tpu_compiles():
        parts = {name: compiled_figures(low.compile()) for name, low in pipe.lower_window_parts(
            controls, sharding=SingleDeviceSharding(devices[0])).items()}
    batch = max(1, min(decode_batch or pipe.window, pipe.window))
    report["projection"] = project_window(chip, parts, steps=controls.steps,
                                          decode_calls=-(-pipe.window // batch),
                                          window=pipe.window, mfu=mfu)
    return report


def _roofline(chip: Chip, fig: dict[str, Any], mfu: float) -> float:
    return max(fig["flops"] / (chip.peak_bf16_flops * mfu),
               fig["bytes_accessed"] / chip.hbm_bandwidth)


def project_window(chip: Chip, parts: dict[str, dict[str, Any]], *, steps: int,
                   decode_calls: int, window: int, mfu: float, fps: float = 25.0
                   ) -> dict[str, Any]:
    """A window's projected time from its loop bodies' compiled figures (``parts``:
    ``denoise`` and ``decode`` from ``compiled_figures``), run ``steps`` and ``decode_calls``
    times. Returns per-part FLOPs, bytes and seconds, the window's seconds, frames/s and the
    streaming first-frame latency of window-by-window streaming (a window of audio at
    ``fps``, then its compute)."""
    d, c = parts["denoise"], parts["decode"]
    t_d, t_c = _roofline(chip, d, mfu), _roofline(chip, c, mfu)
    window_s = steps * t_d + decode_calls * t_c
    return {"mfu_assumed": mfu, "denoise_call_flops": d["flops"],
            "denoise_call_bytes": d["bytes_accessed"], "denoise_call_seconds": t_d,
            "denoise_bound": "compute" if d["flops"] / (chip.peak_bf16_flops * mfu) >= (
                d["bytes_accessed"] / chip.hbm_bandwidth) else "memory",
            "decode_call_flops": c["flops"], "decode_call_bytes": c["bytes_accessed"],
            "decode_call_seconds": t_c, "denoise_calls": steps, "decode_calls": decode_calls,
            "window_flops": steps * d["flops"] + decode_calls * c["flops"],
            "window_seconds": window_s, "frames_per_second": window / window_s,
            "decode_share": decode_calls * t_c / window_s,
            "stream_first_frame_seconds": window / fps + window_s}


def format_sample_plan(r: dict[str, Any]) -> str:
    if "flops_loop_bodies_once" not in r:
        return (f"generation on one {r['chip']} chip ({r['slice']}), decode batch "
                f"{r['decode_batch'] or r['window']}: does NOT fit: temporaries "
                f"{r['temp_bytes'] / GiB:.1f} GiB, available {r['hbm_available_bytes'] / GiB:.1f}"
                f" GiB; {r['advice']}")
    p = r["projection"]
    return "\n".join([
        f"generation on one {r['chip']} chip ({r['slice']}): {r['latent']} "
        f"({r['latent_params']:,} params, {r['dtypes']['latent']}) + {r['motion']} "
        f"({r['motion_params']:,} params, {r['dtypes']['motion']}), {r['resolution']} px, "
        f"W = {r['window']}, {r['steps']} steps, CFG {r['cfg']}",
        f"  fits: {'yes' if r['fits'] else 'NO'}    compile {r['compile_seconds']:.0f} s    "
        f"HBM peak {r['peak_bytes'] / GiB:.2f} of {r['hbm_capacity_bytes'] / GiB:.0f} GiB",
        f"  per window: {p['denoise_calls']} guided MotionDiT calls x "
        f"{p['denoise_call_flops'] / 1e9:.1f} GFLOP ({p['denoise_bound']}-bound, "
        f"{p['denoise_call_seconds'] * 1e3:.2f} ms) + {p['decode_calls']} decoder calls x "
        f"{p['decode_call_flops'] / 1e12:.2f} TFLOP ({p['decode_call_seconds'] * 1e3:.1f} ms)",
        f"  PROJECTED at MFU {p['mfu_assumed']:.0%} (an assumption): "
        f"{p['window_seconds'] * 1e3:.0f} ms per window = {p['frames_per_second']:.1f} frames/s "
        f"({p['decode_share']:.0%} decoding); window-by-window streaming shows its first frame "
        f"{p['stream_first_frame_seconds']:.2f} s after the speech starts. VASA-1 reports "
        f"{VASA1_FPS['offline']:.0f} fps offline, {VASA1_FPS['streaming']:.0f} streaming on an "
        f"{VASA1_FPS['gpu']} at 512 px."])
