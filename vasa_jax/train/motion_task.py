"""Stage 2 as a trainer task: MotionDiT on windows of K + W frames of motion and audio features.

Training example: a window of K + W frames; the first K are the context (previous motion and
audio), the last W the target. Per example (keys from its global stream position): a timestep,
noise, and the paper's condition dropout; the objective is ``vasa_jax.motion.objective``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from data_pipeline import views
from vasa_jax.motion import diffusion
from vasa_jax.motion.audio import AddAudioFeatures, frontend_from_config
from vasa_jax.motion.dit import MotionDiT
from vasa_jax.motion.objective import denoising_loss, draw_randomness
from vasa_jax.train.task import Task


def fill_audio_dims(config, frontend) -> None:
    """Check (or, where 0, set) ``model.audio_dim`` and ``model.audio_layers`` from the frontend:
    a wav2vec2 frontend's width depends on its checkpoint."""
    m = config.model
    layers = getattr(frontend, "num_layers_out", 1)
    for field, value in (("audio_dim", frontend.dim), ("audio_layers", layers)):
        if m.get(field, 1) == 0:
            m[field] = value
        elif m.get(field, 1) != value:
            raise ValueError(f"config.model.{field}={m.get(field, 1)} but the {frontend.name} "
                             f"frontend gives {value}; set it to {value}, or to 0 to take it "
                             f"from the frontend.")


class MotionTask(Task):
    name = "motion"

    def __init__(self, config):
        super().__init__(config)
        self.frontend = frontend_from_config(config.audio)
        fill_audio_dims(config, self.frontend)
        self.schedule = diffusion.make_schedule(config.diffusion.schedule,
                                                config.diffusion.train_steps)
        self.stats: dict[str, np.ndarray] | None = None

    # -- model ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        clips = views.read_clips(self.config, self.config.data.split,
                                 self.config.train.stats_clips, audio_features=True)
        self.stats = views.clip_stats(clips, {"motion": "motion",
                                               "audio": "audio_features"})
        m, d = self.config.model, self.config.data
        for name, key, field in (("motion", "motion_mean", "motion_dim"),
                                 ("audio feature", "audio_mean", "audio_dim")):
            got, want = len(self.stats[key]), m[field]
            if got != want:
                raise ValueError(
                    f"The {name} width of {d.dataset}/{d.config} is {got} but the config says "
                    f"{want}; set model.{field}={got} (e.g. --set) or rebuild the dataset to "
                    f"match.")
        logging.info("motion std %s", np.round(self.stats["motion_std"], 4))

    def init_model(self, model: MotionDiT) -> None:
        if self.stats is not None:
            model.set_stats(**self.stats)

    # -- data ----------------------------------------------------------------------------------
    def window_frames(self) -> int:
        return self.config.model.context + self.config.model.window

    def loader_config(self, batch_size: int):
        return views.window_loader_config(self.config, split=self.config.data.split,
                                          num_frames=self.window_frames(), train=True,
                                          batch_size=batch_size)

    def clip_transforms(self):
        return [AddAudioFeatures(self.frontend)]

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        b = len(batch["motion"])
        out = {"audio_features": np.asarray(batch["audio_features"], np.float32),
               "motion": np.asarray(batch["motion"], np.float32),
               "gaze": np.asarray(batch.get("gaze", np.zeros((b, 2))), np.float32),
               "distance": np.asarray(batch.get("distance", np.zeros((b,))), np.float32),
               "emotion": np.asarray(batch.get("emotion", np.zeros((b,))), np.int32),
               "pos": (np.asarray(batch["pos"], np.int64) % (2 ** 31)).astype(np.int32)}
        return out

    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        b, t, m = batch_size, self.window_frames(), self.config.model
        shapes = {"audio_features": ((b, t, m.audio_dim), np.float32),
                  "motion": ((b, t, m.motion_dim), np.float32), "gaze": ((b, 2), np.float32),
                  "distance": ((b,), np.float32), "emotion": ((b,), np.int32),
                  "pos": ((b,), np.int32)}
        return {k: jax.ShapeDtypeStruct(shape, dt) for k, (shape, dt) in shapes.items()}

    # -- objective -----------------------------------------------------------------------------
    def loss(self, model: MotionDiT, batch, key):
        d = self.config.diffusion
        t, noise, drops = draw_randomness(self.schedule, d, key, batch["pos"], model.window,
                                          model.motion_dim)
        loss, aux = denoising_loss(model, self.schedule, batch, t, noise, drops,
                                   d.velocity_weight)
        return loss, dict(aux, drop_context_rate=drops["context"].mean())

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, model: MotionDiT, step: int) -> dict[str, float]:
        n = self.config.eval.train_eval_clips
        if not n:
            return {}
        from vasa_jax.eval.motion_eval import evaluate_motion

        clips = self.eval_clips(self.config.eval.train_eval_split, n, audio_features=True)
        res = evaluate_motion(model, clips, self.schedule,
                              num_steps=self.config.eval.train_eval_steps,
                              sampler=self.config.sample.sampler,
                              cfg_scales=dict(self.config.sample.cfg), seed=step)
        return {k: res[k] for k in ("jaw_r", "lip_width_r", "av_offset", "delta_p_ratio",
                                    "gaze_error_deg")}

