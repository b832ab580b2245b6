"""MotionDiT: the audio-conditioned diffusion transformer over holistic facial motion (VASA-1 §3.2).

A transformer encoder (paper: 8 layers, width 512, 8 heads) over K + W tokens: K context frames
(the previous window's last motion frames and their audio features) followed by the W frames of the
noisy window with their audio features. Each token is ``Linear(motion) + MLP(audio) + segment +
position``. The diffusion timestep, the main gaze direction (theta, phi), the head-to-camera
distance and the emotion form one condition vector that modulates every block (adaLN-single:
one shared projection plus a learned table per block, zero-initialised). The network predicts
the clean window ``x0`` (B, W, M). At the paper size (8 x 512, 8 heads) it has about 29M
parameters, as VASA-1 reports.

Conditions can be dropped per example (training dropout and classifier-free guidance): dropped
audio is replaced by a learned null embedding (per frame, so trailing frames can be dropped),
dropped context is masked out of attention, dropped gaze/distance/emotion use learned nulls.

Motion and audio features are normalised inside the model with dataset statistics held in
``Stat`` variables (saved with the checkpoint, not trained).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.nn.attention import AdaLNBlock, modulate
from vasa_jax.nn.embeddings import fourier, sinusoidal
from vasa_jax.nn.layers import (MotionStats, dense, dtype_of, layer_norm, learned, set_mean_std,
                                 stat)

CONDITIONS = ("audio", "context", "gaze", "distance", "emotion")


class MotionDiT(MotionStats, nnx.Module):
    """x0-predicting diffusion transformer.

    Args (from ``config.model``): motion_dim M, audio_dim A, width, depth, heads, mlp_ratio,
    window W, context K, num_emotions (0: no emotion condition), dtype ('float32'/'bfloat16'),
    audio_layers N: the audio features of a frame are N stacked feature vectors of A / N each
    (e.g. every hidden state of wav2vec 2.0, layer-major), mixed with learned softmax weights
    (zero-initialised: an even mix) before the audio embedding; 1 = no mix.
    """

    def __init__(self, motion_dim: int, audio_dim: int, *, width: int = 512, depth: int = 8,
                 heads: int = 8, mlp_ratio: float = 4.0, window: int = 50, context: int = 10,
                 num_emotions: int = 4, dtype: str = "float32", audio_layers: int = 1,
                 rngs: nnx.Rngs):
        dt = dtype_of(dtype)
        if audio_layers < 1 or audio_dim % audio_layers:
            raise ValueError(f"audio_dim={audio_dim} is not audio_layers={audio_layers} feature "
                             f"vectors of equal width.")
        self.motion_dim, self.audio_dim, self.audio_layers = motion_dim, audio_dim, audio_layers
        self.window, self.context, self.num_emotions = window, context, num_emotions
        self.dtype = dt
        self.motion_mean, self.motion_std = stat(np.zeros(motion_dim)), stat(np.ones(motion_dim))
        self.audio_mean, self.audio_std = stat(np.zeros(audio_dim)), stat(np.ones(audio_dim))

        self.motion_in = dense(motion_dim, width, ("motion", "embed"), rngs=rngs, dtype=dt)
        if audio_layers > 1:
            self.audio_mix = nnx.Param(jnp.zeros((audio_layers,), jnp.float32),
                                       out_sharding=(None,))
        self.audio_in = EmbedMlp(audio_dim // audio_layers, width, rngs=rngs, dtype=dt)
        self.null_audio = learned((width,), ("embed",), rngs=rngs)
        self.segment = learned((2, width), (None, "embed"), rngs=rngs)
        self.position = learned((context + window, width), (None, "embed"), rngs=rngs)

        self.time_mlp = EmbedMlp(width, width, rngs=rngs, dtype=dt)
        self.gaze_mlp = EmbedMlp(2 * 2 * 8, width, rngs=rngs, dtype=dt)
        self.distance_mlp = EmbedMlp(2 * 8, width, rngs=rngs, dtype=dt)
        self.null_gaze = learned((width,), ("embed",), rngs=rngs)
        self.null_distance = learned((width,), ("embed",), rngs=rngs)
        # Row num_emotions is the null emotion.
        self.emotion_table = learned((num_emotions + 1, width), ("vocab", "embed"), rngs=rngs)

        self.block_mod = dense(width, 6 * width, ("embed", "modulation"), rngs=rngs, dtype=dt,
                               zero_init=True)
        self.blocks = nnx.List([AdaLNBlock(width, heads, mlp_ratio, rngs=rngs, dtype=dt)
                                for _ in range(depth)])
        self.final_norm = layer_norm(width, rngs=rngs, affine=False, dtype=dt)
        self.final_ada = dense(width, 2 * width, ("embed", "modulation"), rngs=rngs, dtype=dt,
                               zero_init=True)
        self.out = dense(width, motion_dim, ("embed", "motion"), rngs=rngs, dtype=dt,
                         zero_init=True)

    # -- normalisation -------------------------------------------------------------------------
    def set_stats(self, motion_mean, motion_std, audio_mean, audio_std) -> None:
        """Install dataset statistics (arrays of size M, M, A, A)."""
        set_mean_std(self.motion_mean, self.motion_std, motion_mean, motion_std, 1e-4)
        set_mean_std(self.audio_mean, self.audio_std, audio_mean, audio_std, 1e-4)

    def normalize_audio(self, a: jax.Array) -> jax.Array:
        return (a - self.audio_mean[...]) / self.audio_std[...]

    # -- forward -------------------------------------------------------------------------------
    def __call__(self, x_t: jax.Array, t: jax.Array, cond: dict[str, jax.Array],
                 drop: dict[str, jax.Array] | None = None) -> jax.Array:
        """Predict the clean (normalised) window.

        Args:
          x_t: (B, W, M) noisy normalised motion.
          t: (B,) int diffusion timesteps.
          cond: ``audio`` (B, W, A) and ``audio_pre`` (B, K, A) normalised audio features;
            ``motion_pre`` (B, K, M) normalised context motion; ``gaze`` (B, 2) radians;
            ``distance`` (B,); ``emotion`` (B,) int.
          drop: per-condition (B,) bools, True = dropped (``CONDITIONS``), plus optionally
            ``audio_frames`` (B, W) bool, False = that window frame's audio is dropped.

        Returns:
          (B, W, M) predicted clean normalised motion, float32.
        """
        b, w, _ = x_t.shape
        k = self.context
        drop = dict(drop or {})
        no = jnp.zeros((b,), bool)
        d = {c: drop.get(c, no) for c in CONDITIONS}

        # Per-frame tokens: context frames, then the noisy window.
        audio = jnp.concatenate([cond["audio_pre"], cond["audio"]], axis=1)  # (B, K+W, A)
        frame_audio = jnp.broadcast_to(~d["audio"][:, None], (b, k + w))
        if "audio_frames" in drop:
            frame_audio = frame_audio & jnp.concatenate(
                [jnp.ones((b, k), bool), drop["audio_frames"]], axis=1)
        if self.audio_layers > 1:  # (B, K+W, N * A/N) -> learned mix over the N vectors
            weights = jax.nn.softmax(self.audio_mix[...])
            audio = jnp.einsum("btnd,n->btd", audio.reshape(*audio.shape[:2], self.audio_layers,
                                                            -1), weights)
        a_emb = self.audio_in(audio.astype(self.dtype))
        a_emb = jnp.where(frame_audio[..., None], a_emb, self.null_audio[...].astype(self.dtype))
        motion = jnp.concatenate([cond["motion_pre"], x_t], axis=1)
        seg = jnp.concatenate([jnp.zeros((k,), jnp.int32), jnp.ones((w,), jnp.int32)])
        h = (self.motion_in(motion.astype(self.dtype)) + a_emb
             + self.segment[...][seg].astype(self.dtype)
             + self.position[...][: k + w].astype(self.dtype))
        key_mask = jnp.concatenate(
            [jnp.broadcast_to(~d["context"][:, None], (b, k)), jnp.ones((b, w), bool)], axis=1)

        # One condition vector: timestep + gaze + distance + emotion.
        c = self.time_mlp(sinusoidal(t, self.time_mlp.fc1.in_features).astype(self.dtype))
        g = self.gaze_mlp(fourier(cond["gaze"].astype(jnp.float32), 8).astype(self.dtype))
        c = c + jnp.where(d["gaze"][:, None], self.null_gaze[...].astype(self.dtype), g)
        dist = self.distance_mlp(fourier(cond["distance"][:, None], 8).astype(self.dtype))
        c = c + jnp.where(d["distance"][:, None], self.null_distance[...].astype(self.dtype), dist)
        emo = jnp.where(d["emotion"] | (self.num_emotions == 0), self.num_emotions,
                        jnp.clip(cond["emotion"], 0, max(self.num_emotions - 1, 0)))
        c = c + self.emotion_table[...][emo].astype(self.dtype)

        mod = self.block_mod(jax.nn.silu(c)).reshape(b, 6, -1)
        for block in self.blocks:
            h = block(h, mod, key_mask)
        shift, scale = jnp.split(self.final_ada(jax.nn.silu(c)), 2, axis=-1)
        h = modulate(self.final_norm(h[:, k:]), shift, scale)
        return self.out(h).astype(jnp.float32)


class EmbedMlp(nnx.Module):
    """Embedding MLP: Linear(in, d) -> SiLU -> Linear(d, d)."""

    def __init__(self, in_features: int, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = dense(in_features, width, ("cond", "embed"), rngs=rngs, dtype=dtype)
        self.fc2 = dense(width, width, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc3 = dense(width, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc3(jax.nn.silu(self.fc2(jax.nn.silu(self.fc1(x)))))


def make_motion_dit(model_cfg: Any, *, rngs: nnx.Rngs) -> MotionDiT:
    """Build from a ``config.model`` ConfigDict."""
    return MotionDiT(
        model_cfg.motion_dim, model_cfg.audio_dim, width=model_cfg.width,
        depth=model_cfg.depth, heads=model_cfg.heads, mlp_ratio=model_cfg.mlp_ratio,
        window=model_cfg.window, context=model_cfg.context,
        num_emotions=model_cfg.num_emotions, dtype=model_cfg.dtype,
        audio_layers=model_cfg.get("audio_layers", 1), rngs=rngs)
