"""Stage 2's training objective (VASA-1 sec. 3.3): denoise a window of W motion frames given its
audio, the K previous frames' motion and audio, and the control signals, each condition dropped
at random for classifier-free guidance.

Loss: ``|| X0 - H(X_t, t, C) ||^2`` in normalised units, plus ``velocity_weight`` times the same
error on frame-to-frame differences (0 in the paper config; see ``diffusion.velocity_loss``).
"""

from __future__ import annotations

import jax

from vasa_jax.motion import diffusion
from vasa_jax.motion.dit import MotionDiT


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
