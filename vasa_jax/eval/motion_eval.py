"""Evaluate generated motion against SynthTalk's ground truth (``vasa-jax eval motion``).

For each held-out clip: audio features -> ``generate_motion`` with the clip's gaze, distance and
emotion as conditions -> compare with the ground-truth track. Reported: per-clip Pearson r of
jaw_open and lip_width (mean over clips), the audio-visual offset of the generated mouth against
the ground truth (peak of the cross-correlation within +-15 frames) and its confidence, ΔP of
generated and real head pose and their ratio, and the gaze error given the gaze condition.
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.synthtalk.motion import FIELD
from vasa_jax.eval import motion_metrics as mm
from vasa_jax.motion import diffusion
from vasa_jax.motion.generate import generate_motion

POSE = slice(FIELD["yaw"], FIELD["roll"] + 1)
JAW, LIP_WIDTH = FIELD["jaw_open"], FIELD["lip_width"]
GAZE = slice(FIELD["gaze_x"], FIELD["gaze_y"] + 1)


@partial(jax.jit, static_argnames=("graphdef", "num_steps", "sampler", "scales", "stride"))
def _generate(graphdef, state, audio, gaze, distance, emotion, key, schedule, *, num_steps,
              sampler, scales, stride=None):
    model = nnx.merge(graphdef, state)
    cond = {"gaze": gaze, "distance": distance, "emotion": emotion}
    return generate_motion(model, audio, cond, key, schedule, num_steps=num_steps,
                           sampler=sampler, cfg_scales=dict(scales), stride=stride)


def generate_for_clips(model, clips: Sequence[Mapping[str, np.ndarray]],
                       schedule: diffusion.Schedule, *, num_steps: int = 50,
                       sampler: str = "ddim", cfg_scales: Mapping[str, float] | None = None,
                       seed: int = 0, batch_size: int = 16, stride: int | None = None
                       ) -> list[np.ndarray]:
    """Generated (T, M) motion per clip (clips batched by equal length); ``stride``: as
    low-latency streaming with that stride generates it (None: W)."""
    graphdef, state = nnx.split(model)
    scales = tuple(sorted((cfg_scales or {}).items()))
    out: list[np.ndarray | None] = [None] * len(clips)
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        by_len.setdefault(len(c["audio_features"]), []).append(i)
    for idx in by_len.values():
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            pad = part + [part[-1]] * (batch_size - len(part)) if len(idx) > batch_size else part
            stack = lambda k, dt: jnp.asarray(np.stack([clips[i][k] for i in pad]), dt)  # noqa
            gen = _generate(graphdef, state, stack("audio_features", jnp.float32),
                            stack("gaze", jnp.float32), stack("distance", jnp.float32),
                            stack("emotion", jnp.int32), jax.random.PRNGKey(seed + s), schedule,
                            num_steps=num_steps, sampler=sampler, scales=scales,
                            stride=stride)
            gen = np.asarray(gen)
            for j, i in enumerate(part):
                out[i] = gen[j]
    return out


def motion_report(generated: Sequence[np.ndarray], clips: Sequence[Mapping[str, np.ndarray]],
                  max_lag: int = 15) -> dict[str, float]:
    """Metrics of generated tracks against the clips' ground truth."""
    real = [np.asarray(c["motion"]) for c in clips]
    offset, conf, _ = mm.av_offset([g[:, JAW] for g in generated], [r[:, JAW] for r in real],
                                   max_lag)
    dp_gen = float(np.mean([mm.delta_p(g[:, POSE]) for g in generated]))
    dp_real = float(np.mean([mm.delta_p(r[:, POSE]) for r in real]))
    return {
        "jaw_r": float(np.mean([mm.pearson(g[:, JAW], r[:, JAW]) for g, r in zip(generated, real)])),
        "lip_width_r": float(np.mean([mm.pearson(g[:, LIP_WIDTH], r[:, LIP_WIDTH])
                                      for g, r in zip(generated, real)])),
        "av_offset": float(offset),
        "av_confidence": conf,
        "delta_p": dp_gen,
        "delta_p_real": dp_real,
        "delta_p_ratio": dp_gen / dp_real if dp_real > 0 else float("nan"),
        "gaze_error_deg": float(np.mean([mm.gaze_error_degrees(g[:, GAZE], c["gaze"])
                                         for g, c in zip(generated, clips)])),
        "num_clips": float(len(clips)),
    }


def evaluate_motion(model, clips, schedule, *, num_steps=50, sampler="ddim", cfg_scales=None,
                    seed=0, batch_size=16) -> dict[str, float]:
    gen = generate_for_clips(model, clips, schedule, num_steps=num_steps, sampler=sampler,
                             cfg_scales=cfg_scales, seed=seed, batch_size=batch_size)
    return motion_report(gen, clips)


def real_row(clips) -> dict[str, float]:
    """The ground truth measured by the same metrics (the table's "Real video" row)."""
    return motion_report([np.asarray(c["motion"]) for c in clips], clips)


COLUMNS = (("jaw_r", "jaw r ↑", "{:.3f}"), ("lip_width_r", "lip width r ↑", "{:.3f}"),
           ("av_offset", "AV offset (frames)", "{:+.0f}"), ("av_confidence", "AV conf ↑", "{:.3f}"),
           ("delta_p", "ΔP (rad/frame)", "{:.4f}"), ("delta_p_ratio", "ΔP / real", "{:.2f}"),
           ("gaze_error_deg", "gaze err (deg) ↓", "{:.2f}"))


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    head = "| system | " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|---|" + "---|" * len(COLUMNS)
    lines = [head, sep]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(r[k]) for k, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def write_report(rows: Mapping[str, Mapping[str, float]], out_dir: str, meta: Mapping) -> tuple[str, str]:
    """Write ``motion_eval.md`` and ``motion_eval.json``; returns their paths."""
    from vasa_jax.atomic import atomic_path

    os.makedirs(out_dir, exist_ok=True)
    md_path, js_path = os.path.join(out_dir, "motion_eval.md"), os.path.join(out_dir, "motion_eval.json")
    md = ["# Stage 2 motion evaluation", "",
          ", ".join(f"{k}: {v}" for k, v in meta.items()), "", markdown_table(rows), ""]
    with atomic_path(md_path) as tmp:
        open(tmp, "w").write("\n".join(md))
    with atomic_path(js_path) as tmp:
        json.dump({"meta": dict(meta), "rows": {k: dict(v) for k, v in rows.items()}},
                  open(tmp, "w"), indent=2)
    return md_path, js_path


def evaluate_workdir(workdir: str, *, split: str = "test", max_clips: int | None = None,
                     cfg_audio: Sequence[float] = (1.0,), steps: int = 50, seed: int = 0,
                     data_dir: str | None = None, out: str | None = None,
                     progress=print) -> tuple[str, str, dict]:
    """The stage-2 run in ``workdir`` (EMA weights) on the whole clips of ``split``: a ground
    truth row and one row per audio guidance scale in ``cfg_audio`` (gaze guidance as the run's
    config), written as markdown + JSON to ``out`` (default ``workdir/eval``). Returns
    (md path, json path, rows). FileNotFoundError / ValueError name the fix for a missing or
    wrong run."""
    from data_pipeline.views import read_clips
    from vasa_jax.models import restore_model

    run = restore_model(workdir, task="motion", what="stage-2 (motion) run")
    config = run.config
    if data_dir:
        config.data.data_dir = data_dir
    clips = read_clips(config, split, max_clips or None, audio_features=True)
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.train_steps)
    gaze_scale = float(config.sample.cfg.get("gaze", 1.0))
    rows = {"Real video (ground truth)": real_row(clips)}
    for lam in cfg_audio:
        progress(f"Generating motion for {len(clips)} {split} clips: λA={lam:g}, "
                 f"λg={gaze_scale:g}, {steps} steps ...")
        rows[f"MotionDiT, λA={lam:g}, λg={gaze_scale:g}, {steps} steps"] = evaluate_motion(
            run.model, clips, schedule, num_steps=steps, sampler=config.sample.sampler,
            cfg_scales={"audio": lam, "gaze": gaze_scale}, seed=seed)
    meta = {"workdir": workdir, "checkpoint_step": run.step, "split": split,
            "clips": len(clips), "dataset": f"{config.data.dataset}/{config.data.config}",
            "sampler": config.sample.sampler, "seed": seed}
    md, js = write_report(rows, out or os.path.join(workdir, "eval"), meta)
    return md, js, rows
