"""Motion for arbitrary-length audio: slide the diffusion window over the audio features.

``window_step`` generates one window of W frames: every denoising step with multi-condition CFG
(one batched model call per step), given a ``WindowCarry`` that holds the last K generated
motion frames and their audio features (the next window's context). ``generate_motion`` is one
traceable ``lax.scan`` of that step over all windows; streaming generation calls the same step
window by window (``vasa_jax.pipeline``), so both give the same motion for the same key.

The first window has no history (its context is dropped, as in training); audio beyond the end
is padded and marked dropped, and the output is trimmed to the input length. A condition left
out of ``conditions`` (gaze, distance, emotion) is dropped: the model's learned null is used.
"""

from __future__ import annotations

from typing import Mapping

import flax.struct
import jax
import jax.numpy as jnp

from vasa_jax.motion import diffusion
from vasa_jax.motion.dit import MotionDiT

CONTROL_CONDITIONS = ("gaze", "distance", "emotion")
_PLACEHOLDER = {"gaze": ((2,), jnp.float32), "distance": ((), jnp.float32),
                "emotion": ((), jnp.int32)}


@flax.struct.dataclass
class WindowCarry:
    """What one window passes to the next: normalised context motion (B, K, M) and audio
    features (B, K, A), whether no window came before (context dropped), and the window index
    (window i samples with ``fold_in(key, i)``)."""

    motion_pre: jax.Array
    audio_pre: jax.Array
    first: jax.Array  # bool scalar
    index: jax.Array  # int32 scalar


def init_carry(model: MotionDiT, batch: int) -> WindowCarry:
    k = model.context
    return WindowCarry(jnp.zeros((batch, k, model.motion_dim), jnp.float32),
                       jnp.zeros((batch, k, model.audio_dim), jnp.float32),
                       jnp.bool_(True), jnp.int32(0))


def complete_conditions(conditions: Mapping[str, jax.Array], batch: int
                        ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(conditions with placeholders for the missing ones, per-condition (B,) drop flags)."""
    cond, drop = {}, {}
    for c in CONTROL_CONDITIONS:
        shape, dtype = _PLACEHOLDER[c]
        given = conditions.get(c)
        cond[c] = (jnp.zeros((batch,) + shape, dtype) if given is None
                   else jnp.asarray(given, dtype))
        drop[c] = jnp.full((batch,), given is None)
    return cond, drop


def window_conditions(model: MotionDiT, carry: WindowCarry, audio_window: jax.Array,
                      frames_ok: jax.Array, conditions: Mapping[str, jax.Array]
                      ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """What every denoising call of a window is conditioned on: (cond, drop) for
    ``MotionDiT(x_t, t, cond, drop)``, with the (B, W, A) audio normalised (zero where
    ``frames_ok`` is False) and the carry's context (dropped in the first window)."""
    b, w, _ = audio_window.shape
    a = model.normalize_audio(audio_window.astype(jnp.float32))
    a = jnp.where(frames_ok[None, :, None], a, 0.0)
    cond, drop = complete_conditions(conditions, b)
    cond.update(audio=a, audio_pre=carry.audio_pre, motion_pre=carry.motion_pre)
    drop.update(audio=jnp.zeros((b,), bool), context=jnp.full((b,), carry.first),
                audio_frames=jnp.broadcast_to(frames_ok, (b, w)))
    return cond, drop


def window_step(model: MotionDiT, carry: WindowCarry, audio_window: jax.Array,
                frames_ok: jax.Array, conditions: Mapping[str, jax.Array], key: jax.Array,
                schedule: diffusion.Schedule, *, num_steps: int = 50, sampler: str = "ddim",
                eta: float = 0.0, cfg_scales: Mapping[str, float] | None = None,
                commit: int | None = None) -> tuple[WindowCarry, jax.Array]:
    """One window.

    ``commit`` (S, default W): how many of the window's first frames are kept. With S < W
    (low-latency streaming) a window is sampled whole but only its first S frames are committed:
    the next window starts S frames later and its context is the last K committed frames, so
    frames past S (audio not heard yet, ``frames_ok`` False) only shape what is kept. The
    context counts as given once K frames have been committed.

    Args:
      model: the merged MotionDiT.
      carry: from ``init_carry`` or the previous window.
      audio_window: (B, W, A) raw frontend features (zeros where ``frames_ok`` is False).
      frames_ok: (W,) bool, False for padding beyond the end of the audio.
      conditions: ``gaze`` (B, 2), ``distance`` (B,), ``emotion`` (B,) int; missing = dropped.
      key: the generation key (this window uses ``fold_in(key, carry.index)``).

    Returns:
      (next carry, (B, W, M) motion in data units).
    """
    b, w, _ = audio_window.shape
    k = model.context
    cond, drop = window_conditions(model, carry, audio_window, frames_ok, conditions)
    a = cond["audio"]
    denoiser = diffusion.guided_denoiser(model, cfg_scales or {})
    x0 = diffusion.sample(lambda x, t: denoiser(x, t, cond, drop),
                          jax.random.fold_in(key, carry.index), (b, w, model.motion_dim),
                          schedule, num_steps, kind=sampler, eta=eta)
    s = w if commit is None else commit
    if not 1 <= s <= w:
        raise ValueError(f"commit must be in [1, W={w}], got {s}.")
    last_k = lambda pre, x: jnp.concatenate([pre, x[:, :s]], axis=1)[:, pre.shape[1] + s - k:]  # noqa: E731
    nxt = WindowCarry(last_k(carry.motion_pre, x0), last_k(carry.audio_pre, a),
                      carry.first & ((carry.index + 1) * s < k), carry.index + 1)
    return nxt, model.denormalize_motion(x0)


def split_windows(audio_features: jax.Array, window: int, stride: int | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """(B, N, A) -> zero-padded windows (n_win, B, W, A) and their (n_win, W) validity.
    ``stride`` S (default W): window i starts at frame i S and only its first S frames are
    valid (low-latency streaming: the rest is audio not heard yet); n_win = ceil(N / S)."""
    b, n, _ = audio_features.shape
    s = window if stride is None else stride
    n_win = -(-n // s)
    audio = jnp.pad(audio_features, ((0, 0), (0, n_win * s + window - s - n), (0, 0)))
    starts = jnp.arange(n_win) * s
    frames = starts[:, None] + jnp.arange(window)[None]  # (n_win, W) absolute frame indices
    valid = (frames < n) & (jnp.arange(window)[None] < s)
    return jnp.moveaxis(audio[:, frames], 1, 0), valid


def generate_motion(model: MotionDiT, audio_features: jax.Array, conditions: Mapping[str, jax.Array],
                    key: jax.Array, schedule: diffusion.Schedule, *, num_steps: int = 50,
                    sampler: str = "ddim", eta: float = 0.0,
                    cfg_scales: Mapping[str, float] | None = None,
                    stride: int | None = None) -> jax.Array:
    """Generate motion for ``audio_features`` (B, N, A) raw frontend features, N any positive
    length; ``conditions`` as in ``window_step``; ``stride`` S < W: what low-latency streaming
    commits (each window sampled from the audio up to its S-th frame). Returns (B, N, M) motion
    in data units."""
    b, n, _ = audio_features.shape
    if model.context > model.window:
        raise ValueError(f"Context K={model.context} must not exceed the window "
                         f"W={model.window}.")
    s = model.window if stride is None else stride
    audio_w, valid_w = split_windows(audio_features.astype(jnp.float32), model.window, s)

    def window(carry, xs):
        carry, motion = window_step(model, carry, xs[0], xs[1], conditions, key, schedule,
                                    num_steps=num_steps, sampler=sampler, eta=eta,
                                    cfg_scales=cfg_scales, commit=s)
        return carry, motion[:, :s]

    _, out = jax.lax.scan(window, init_carry(model, b), (audio_w, valid_w))
    return jnp.moveaxis(out, 0, 1).reshape(b, -1, model.motion_dim)[:, :n]
