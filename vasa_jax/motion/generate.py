"""Motion for arbitrary-length audio: slide the diffusion window over the audio features.

``generate_motion`` is one traceable function: a ``lax.scan`` over windows of W frames whose carry
is the last K generated motion frames and their audio features (the next window's context); each
window runs every denoising step with multi-condition CFG (one batched model call). The first
window has no history (its context is dropped, as in training); audio beyond the end is padded and
marked dropped, and the output is trimmed to the input length.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from vasa_jax.motion import diffusion
from vasa_jax.motion.dit import MotionDiT


def generate_motion(model: MotionDiT, audio_features: jax.Array, conditions: Mapping[str, jax.Array],
                    key: jax.Array, schedule: diffusion.Schedule, *, num_steps: int = 50,
                    sampler: str = "ddim", eta: float = 0.0,
                    cfg_scales: Mapping[str, float] | None = None) -> jax.Array:
    """Generate motion for ``audio_features``.

    Args:
      model: the (merged) MotionDiT; its statistics normalise inputs and outputs.
      audio_features: (B, N, A) raw frontend features, N any positive length.
      conditions: ``gaze`` (B, 2), ``distance`` (B,), ``emotion`` (B,) int.
      key: PRNG key (window i uses ``fold_in(key, i)``).
      schedule: the training noise schedule.
      num_steps, sampler, eta: the reverse process per window.
      cfg_scales: guidance scale per condition, e.g. ``{"audio": 0.5, "gaze": 1.0}``.

    Returns:
      (B, N, M) motion in data units.
    """
    b, n, _ = audio_features.shape
    w, k = model.window, model.context
    if k > w:
        raise ValueError(f"Context K={k} must not exceed the window W={w}.")
    n_win = -(-n // w)
    pad = n_win * w - n
    audio = model.normalize_audio(audio_features.astype(jnp.float32))
    audio = jnp.pad(audio, ((0, 0), (0, pad), (0, 0)))
    valid = jnp.arange(n_win * w) < n
    audio_w = jnp.moveaxis(audio.reshape(b, n_win, w, -1), 1, 0)  # (n_win, B, W, A)
    valid_w = valid.reshape(n_win, w)
    denoiser = diffusion.guided_denoiser(model, cfg_scales or {})
    m = model.motion_dim

    def window(carry, xs):
        motion_pre, audio_pre, first = carry
        a, frames_ok, i = xs
        cond = dict(conditions, audio=a, audio_pre=audio_pre, motion_pre=motion_pre)
        drop = {c: jnp.zeros((b,), bool) for c in ("audio", "gaze", "distance", "emotion")}
        drop["context"] = jnp.full((b,), first)
        drop["audio_frames"] = jnp.broadcast_to(frames_ok, (b, w))
        x0 = diffusion.sample(lambda x, t: denoiser(x, t, cond, drop), jax.random.fold_in(key, i),
                              (b, w, m), schedule, num_steps, kind=sampler, eta=eta)
        return (x0[:, w - k:], a[:, w - k:], jnp.bool_(False)), x0

    init = (jnp.zeros((b, k, m), jnp.float32), jnp.zeros((b, k, audio.shape[-1]), jnp.float32),
            jnp.bool_(True))
    _, out = jax.lax.scan(window, init, (audio_w, valid_w, jnp.arange(n_win)))
    out = jnp.moveaxis(out, 0, 1).reshape(b, n_win * w, m)[:, :n]
    return model.denormalize_motion(out)
