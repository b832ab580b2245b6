"""Stage 2 as a trainer task: MotionDiT on windows of K + W frames of motion and audio features.

Training example: a window of K + W frames; the first K are the context (previous motion and
audio), the last W the target. Per example (keys from its global stream position): a timestep,
noise, and the paper's condition dropout. Loss: ``|| X0 - H(X_t, t, C) ||^2`` in normalised units,
plus ``velocity_weight`` times the same error on frame-to-frame differences (0 in the paper
config; see ``diffusion.velocity_loss``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from flax import nnx

from data_pipeline.loader import LoaderConfig, make_loader, open_source
from vasa_jax import parallel
from vasa_jax.motion import diffusion
from vasa_jax.motion.audio import AddAudioFeatures, make_frontend
from vasa_jax.motion.dit import MotionDiT, make_motion_dit
from vasa_jax.train.task import Task

def frontend_from_config(config):
    a = config.audio
    return make_frontend(a.frontend, **{k: v for k, v in a.items() if k != "frontend"})


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


def loader_config(config, *, split: str, num_frames: int, train: bool, batch_size: int,
                  shard_index=None, shard_count=None) -> LoaderConfig:
    """Motion-only windows (no pixels, no raw audio; audio features come from a clip
    transform)."""
    d = config.data
    return LoaderConfig(
        dataset=d.dataset, config=d.config, split=split, data_dir=d.data_dir or None,
        num_frames=num_frames, batch_size=batch_size, seed=config.seed, shuffle=train,
        num_epochs=None if train else 1, random_window=train, frames=False, audio=False,
        augment=train and d.flip, flip_prob=0.5, colour_jitter=0.0, drop_remainder=train,
        cache_clips=d.cache_clips if train else 0,
        worker_count=d.num_workers if train else 0, worker_buffer_size=d.worker_buffer_size,
        shard_index=shard_index, shard_count=shard_count)


def read_clips(config, split: str, max_clips: int | None = None) -> list[dict[str, np.ndarray]]:
    """Whole clips of a split (in stored order) with audio features: motion (T, M),
    audio_features (T, A), gaze, distance, emotion, identity."""
    d = config.data
    source, info = open_source(d.dataset, d.config, split, d.data_dir or None)
    n = len(source) if max_clips is None else min(max_clips, len(source))
    num_frames = info.features["motion"].shape[0]
    cfg = loader_config(config, split=split, num_frames=num_frames, train=False, batch_size=1,
                        shard_index=0, shard_count=1)
    it = iter(make_loader(cfg, clip_transforms=[AddAudioFeatures(frontend_from_config(config))]))
    clips = []
    for _ in range(n):
        b = next(it)
        clips.append({k: v[0] for k, v in b.items()})
    return clips


def dataset_stats(config, max_clips: int) -> dict[str, np.ndarray]:
    """Per-dimension mean/std of motion and audio features over the first clips of the train
    split (deterministic)."""
    clips = read_clips(config, config.data.split, max_clips)
    motion = np.concatenate([c["motion"] for c in clips])
    audio = np.concatenate([c["audio_features"] for c in clips])
    return {"motion_mean": motion.mean(0), "motion_std": motion.std(0),
            "audio_mean": audio.mean(0), "audio_std": audio.std(0)}


def window_conditions(model: MotionDiT, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A batch of K + W frame windows -> (clean window x0 (B, W, M) normalised, the model's
    conditions: audio (B, W, A), audio_pre (B, K, A), motion_pre (B, K, M), gaze, distance,
    emotion)."""
    k = model.context
    motion = model.normalize_motion(batch["motion"])
    audio = model.normalize_audio(batch["audio_features"])
    cond = {"audio": audio[:, k:], "audio_pre": audio[:, :k], "motion_pre": motion[:, :k],
            "gaze": batch["gaze"], "distance": batch["distance"], "emotion": batch["emotion"]}
    return motion[:, k:], cond


def denoising_loss(model: MotionDiT, schedule: diffusion.Schedule, batch, t, noise, drops,
                   velocity_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The stage-2 objective with its randomness given: timesteps t (B,), noise (B, W, M) and
    condition drops (``diffusion.sample_drops``). x0 MSE + velocity_weight * velocity MSE."""
    x0, cond = window_conditions(model, batch)
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    pred = model(x_t, t, cond, drops)
    x0_mse = diffusion.x0_loss(pred, x0).mean()
    vel_mse = diffusion.velocity_loss(pred, x0).mean()
    return x0_mse + velocity_weight * vel_mse, {"x0_mse": x0_mse, "velocity_mse": vel_mse}


def draw_randomness(schedule: diffusion.Schedule, diffusion_cfg, key: jax.Array,
                    positions: jax.Array, window: int, motion_dim: int):
    """The per-example randomness of one training step: one key per example from its global
    stream position ``positions`` (B,) folded into the step key ``key``, split into a timestep,
    noise and the condition drops. -> t (B,) int32, noise (B, W, M), drops (dict of (B,) / (B, W)
    bool, ``diffusion.sample_drops``)."""
    d = diffusion_cfg
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, positions)

    def per_example(kk):
        k1, k2, k3 = jax.random.split(kk, 3)
        t = jax.random.randint(k1, (), 0, schedule.num_steps)
        noise = jax.random.normal(k2, (window, motion_dim))
        drops = diffusion.sample_drops(
            k3, window, p_condition=d.p_condition, p_context=d.p_context,
            p_audio_tail=d.p_audio_tail, max_audio_tail=d.max_audio_tail)
        return t, noise, drops

    return jax.vmap(per_example)(keys)


class MotionTask(Task):
    name = "motion"

    def __init__(self, config):
        super().__init__(config)
        self.frontend = frontend_from_config(config)
        fill_audio_dims(config, self.frontend)
        self.schedule = diffusion.make_schedule(config.diffusion.schedule,
                                                config.diffusion.train_steps)
        self.stats: dict[str, np.ndarray] | None = None

    # -- model ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.stats = dataset_stats(self.config, self.config.train.stats_clips)
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

    def make_model(self, rngs: nnx.Rngs) -> MotionDiT:
        return make_motion_dit(self.config.model, rngs=rngs)

    def init_model(self, model: MotionDiT) -> None:
        if self.stats is not None:
            model.set_stats(**self.stats)

    # -- data ----------------------------------------------------------------------------------
    def window_frames(self) -> int:
        return self.config.model.context + self.config.model.window

    def train_loader(self):
        per_process = parallel.batch_size_per_process(self.config.data.batch_size)
        cfg = loader_config(self.config, split=self.config.data.split,
                            num_frames=self.window_frames(), train=True, batch_size=per_process)
        return make_loader(cfg, clip_transforms=[AddAudioFeatures(self.frontend)])

    def device_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        b = len(batch["motion"])
        out = {"audio_features": np.asarray(batch["audio_features"], np.float32),
               "motion": np.asarray(batch["motion"], np.float32),
               "gaze": np.asarray(batch.get("gaze", np.zeros((b, 2))), np.float32),
               "distance": np.asarray(batch.get("distance", np.zeros((b,))), np.float32),
               "emotion": np.asarray(batch.get("emotion", np.zeros((b,))), np.int32),
               "pos": (np.asarray(batch["pos"], np.int64) % (2 ** 31)).astype(np.int32)}
        return out

    # -- objective -----------------------------------------------------------------------------
    def loss(self, model: MotionDiT, batch, key):
        d = self.config.diffusion
        t, noise, drops = draw_randomness(self.schedule, d, key, batch["pos"], model.window,
                                          model.motion_dim)
        loss, aux = denoising_loss(model, self.schedule, batch, t, noise, drops,
                                   d.velocity_weight)
        return loss, dict(aux, drop_context_rate=drops["context"].mean())

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, trainer, step: int) -> dict[str, float]:
        n = self.config.eval.train_eval_clips
        if not n:
            return {}
        from vasa_jax.train.restore import main_process_model

        model = main_process_model(trainer)  # a collective: every process takes part
        if model is None:
            return {}
        from vasa_jax.eval.motion_eval import evaluate_motion

        if not hasattr(self, "_eval_clips"):
            self._eval_clips = read_clips(self.config, self.config.eval.train_eval_split, n)
        res = evaluate_motion(model, self._eval_clips, self.schedule,
                              num_steps=self.config.eval.train_eval_steps,
                              sampler=self.config.sample.sampler,
                              cfg_scales=dict(self.config.sample.cfg), seed=step)
        return {k: res[k] for k in ("jaw_r", "lip_width_r", "av_offset", "delta_p_ratio",
                                    "gaze_error_deg")}

