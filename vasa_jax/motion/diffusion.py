"""Diffusion over motion windows: DDPM schedules, the forward process, the x0 objective, the
paper's condition dropout, multi-condition classifier-free guidance, and DDPM/DDIM samplers.

Samplers work for any number of steps (a strided subsequence of the training timesteps) and
keep their state in a pure pytree (``SamplerState``), so the whole loop runs inside ``jit``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vasa_jax.motion.dit import CONDITIONS


@flax.struct.dataclass
class Schedule:
    """Noise schedule over ``T`` training timesteps (all (T,) float32)."""

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def make_schedule(kind: str = "cosine", num_steps: int = 1000) -> Schedule:
    """``linear`` (Ho et al. 2020: 1e-4 .. 2e-2 over 1000 steps, rescaled for other lengths) or
    ``cosine`` (Nichol & Dhariwal 2021, s = 0.008, betas clipped at 0.999)."""
    if kind == "linear":
        scale = 1000.0 / num_steps
        betas = np.linspace(scale * 1e-4, scale * 2e-2, num_steps, dtype=np.float64)
    elif kind == "cosine":
        s = 0.008
        t = np.linspace(0, num_steps, num_steps + 1, dtype=np.float64) / num_steps
        f = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        ac = f / f[0]
        betas = np.clip(1.0 - ac[1:] / ac[:-1], 0.0, 0.999)
    else:
        raise ValueError(f"Unknown noise schedule {kind!r}; use 'cosine' or 'linear'.")
    ac = np.cumprod(1.0 - betas)
    return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(ac, jnp.float32))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward process x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise; x0/noise (B, ...), t (B,)."""
    ac = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.sqrt(ac) * x0 + jnp.sqrt(1.0 - ac) * noise


def x0_loss(pred: jax.Array, x0: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error ``E || X0 - H(X_t, t, C) ||^2`` per example: (B, W, M) -> (B,)."""
    err = jnp.square(pred - x0)
    if mask is not None:
        err = err * mask
        return err.sum(axis=tuple(range(1, err.ndim))) / jnp.maximum(
            jnp.broadcast_to(mask, err.shape).sum(axis=tuple(range(1, err.ndim))), 1.0)
    return err.mean(axis=tuple(range(1, err.ndim)))


def velocity_loss(pred: jax.Array, x0: jax.Array) -> jax.Array:
    """Mean squared error of frame-to-frame differences: (B, W, M) -> (B,).

    Not in VASA-1: an optional auxiliary term (``config.diffusion.velocity_weight``) with the
    same optimum as the x0 loss that weights high-frequency (jitter) errors more, as motion
    diffusion models commonly do (e.g. MDM, Tevet et al. 2023)."""
    d = lambda x: x[:, 1:] - x[:, :-1]  # noqa: E731
    return jnp.square(d(pred) - d(x0)).mean(axis=(1, 2))


def sample_drops(key: jax.Array, window: int, *, p_condition: float = 0.1,
                 p_context: float = 0.5, p_audio_tail: float = 0.1, max_audio_tail: int = 0
                 ) -> dict[str, jax.Array]:
    """Condition dropout for ONE example (vmap over a batch of keys).

    As in VASA-1: each condition (audio, gaze, distance, emotion) is dropped with
    ``p_condition``; the context (previous motion and audio) with ``p_context``, so the first
    window needs no history; and with ``p_audio_tail`` the last 1..``max_audio_tail`` audio frames
    of the window are dropped (``audio_frames`` False there).

    Returns scalars per condition (True = dropped) and ``audio_frames`` (W,) bool.
    """
    keys = jax.random.split(key, 7)
    out = {c: jax.random.bernoulli(keys[i], p_condition)
           for i, c in enumerate(CONDITIONS) if c != "context"}
    out["context"] = jax.random.bernoulli(keys[5], p_context)
    max_tail = max_audio_tail or max(1, window // 5)
    tail = jax.random.randint(keys[6], (), 1, max_tail + 1)
    tail = jnp.where(jax.random.bernoulli(jax.random.fold_in(keys[6], 1), p_audio_tail), tail, 0)
    out["audio_frames"] = jnp.arange(window) < window - tail
    return out


def cfg_combine(full: jax.Array, dropped: Mapping[str, jax.Array],
                scales: Mapping[str, float]) -> jax.Array:
    """Multi-condition classifier-free guidance (VASA-1 eq. 2):
    ``X0 = (1 + sum_c l_c) H(X_t, t, C) - sum_c l_c H(X_t, t, C | c = empty)``."""
    total = sum(scales.values())
    out = (1.0 + total) * full
    for c, lam in scales.items():
        out = out - lam * dropped[c]
    return out


def guided_denoiser(model_fn: Callable, scales: Mapping[str, float]) -> Callable:
    """Wrap ``model_fn(x_t, t, cond, drop) -> x0`` into ``f(x_t, t, cond, drop) -> guided x0``.

    The conditional pass and one pass per guided condition (with that condition dropped) run as
    ONE batched call of size (1 + number of guided conditions) x B.
    """
    active = {c: float(s) for c, s in scales.items() if s}
    for c in active:
        if c not in CONDITIONS:
            raise ValueError(f"Cannot guide on {c!r}; conditions are {CONDITIONS}.")
    if not active:
        return model_fn
    names = list(active)

    def f(x_t, t, cond, drop):
        n = 1 + len(names)
        b = x_t.shape[0]
        tile = lambda a: jnp.concatenate([a] * n, axis=0)  # noqa: E731
        cond_n = jax.tree.map(tile, cond)
        drop_n = jax.tree.map(tile, drop)
        for i, c in enumerate(names, start=1):
            drop_n[c] = drop_n[c].at[i * b:(i + 1) * b].set(True)
        out = model_fn(tile(x_t), tile(t), cond_n, drop_n)
        parts = jnp.split(out, n, axis=0)
        return cfg_combine(parts[0], dict(zip(names, parts[1:])), active)

    return f


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------

@flax.struct.dataclass
class SamplerState:
    """Pure sampler state: the current sample, the index into the timestep sequence, the key."""

    x: jax.Array
    step: jax.Array  # int32 scalar, 0 .. num_sampling_steps
    key: jax.Array


def sampling_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """Descending, evenly strided training timesteps for ``num_steps`` sampling steps."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be in [1, {num_train_steps}], got {num_steps}.")
    ts = np.linspace(0, num_train_steps - 1, num_steps).round().astype(np.int32)
    return ts[::-1].copy()


def init_sampler(key: jax.Array, shape: Sequence[int]) -> SamplerState:
    k0, k1 = jax.random.split(key)
    return SamplerState(jax.random.normal(k0, tuple(shape), jnp.float32), jnp.int32(0), k1)


def sampler_step(state: SamplerState, denoise: Callable[[jax.Array, jax.Array], jax.Array],
                 schedule: Schedule, timesteps: jax.Array, *, kind: str = "ddim",
                 eta: float = 0.0) -> SamplerState:
    """One reverse step from ``timesteps[state.step]`` to the next one (or to 0 at the end).

    ``denoise(x_t, t)`` returns the predicted clean sample. ``ddpm`` draws from the posterior
    q(x_prev | x_t, x0) of the strided chain; ``ddim`` (Song et al. 2021) uses ``eta``
    (0 = deterministic).
    """
    n = timesteps.shape[0]
    t = timesteps[state.step]
    has_prev = state.step + 1 < n
    t_prev = timesteps[jnp.minimum(state.step + 1, n - 1)]
    a_t = schedule.alphas_cumprod[t]
    a_prev = jnp.where(has_prev, schedule.alphas_cumprod[t_prev], 1.0)
    x0 = denoise(state.x, jnp.full((state.x.shape[0],), t, jnp.int32))
    key, sub = jax.random.split(state.key)
    noise = jax.random.normal(sub, state.x.shape, jnp.float32)
    if kind == "ddpm":
        beta = 1.0 - a_t / a_prev
        mean = (jnp.sqrt(a_prev) * beta / (1.0 - a_t)) * x0 + (
            jnp.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)) * state.x
        var = beta * (1.0 - a_prev) / (1.0 - a_t)
        x_prev = mean + jnp.sqrt(jnp.maximum(var, 0.0)) * noise
    elif kind == "ddim":
        eps = (state.x - jnp.sqrt(a_t) * x0) / jnp.sqrt(jnp.maximum(1.0 - a_t, 1e-12))
        sigma = eta * jnp.sqrt(jnp.maximum((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev), 0.0))
        x_prev = (jnp.sqrt(a_prev) * x0
                  + jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0)) * eps + sigma * noise)
    else:
        raise ValueError(f"Unknown sampler {kind!r}; use 'ddim' or 'ddpm'.")
    x_prev = jnp.where(has_prev, x_prev, x0)  # the last step returns the clean prediction
    return SamplerState(x_prev, state.step + 1, key)


def sample(denoise: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array,
           shape: Sequence[int], schedule: Schedule, num_steps: int, *, kind: str = "ddim",
           eta: float = 0.0) -> jax.Array:
    """Run ``num_steps`` reverse steps from pure noise of ``shape`` (jit-friendly)."""
    timesteps = jnp.asarray(sampling_timesteps(schedule.num_steps, num_steps))
    state = init_sampler(key, shape)
    state = jax.lax.fori_loop(
        0, num_steps,
        lambda _, s: sampler_step(s, denoise, schedule, timesteps, kind=kind, eta=eta), state)
    return state.x
