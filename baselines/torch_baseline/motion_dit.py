"""PyTorch MotionDiT: the same network as ``vasa_jax.motion.dit.MotionDiT``, in idiomatic torch.

An x0-predicting transformer encoder over K context frames + W noisy window frames. Each token
is ``Linear(motion) + MLP(audio) + segment + position``; the timestep, gaze, distance and emotion
form one condition vector that modulates every block through adaLN-single (one shared
projection to 6 x width plus a learned (6, width) table per block). Dropped conditions use learned
null embeddings (audio per frame), a dropped context is masked out of attention.

Parameter layout (``state_dict`` names) mirrors the Flax module tree so that
``vasa_jax.interop.motion_dit`` converts by name: Flax ``kernel`` (in, out) <-> torch ``weight``
(out, in); attention projections are ``Linear(width, heads * head_dim, bias=False)``.

Only float32 compute is implemented (``model.dtype == 'float32'``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONDITIONS = ("audio", "context", "gaze", "distance", "emotion")


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) -> (B, dim): [cos(x f), sin(x f)] with geometric frequencies (as vasa_jax.nn)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    args = x.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def fourier(x: torch.Tensor, num: int, max_freq: float = 16.0) -> torch.Tensor:
    """(B, C) -> (B, C * 2 num): [sin(pi f x), cos(pi f x)] per channel, f geometric in
    [1, max_freq]."""
    freqs = torch.from_numpy(
        (np.pi * np.geomspace(1.0, max_freq, num)).astype(np.float32)).to(x.device)
    args = x.float()[..., None] * freqs
    feats = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return feats.reshape(*x.shape[:-1], -1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, d) * (1 + scale) + shift, shift/scale (B, d)."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class EmbedMlp(nn.Module):
    """Linear(in, d) -> SiLU -> Linear(d, d) -> SiLU -> Linear(d, d)."""

    def __init__(self, in_features: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.silu(self.fc2(F.silu(self.fc1(x)))))


class Mlp(nn.Module):
    """Linear(d, h) -> GELU (tanh approximation, as jax.nn.gelu) -> Linear(h, d)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with a key mask (False = not attended)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}.")
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        split = lambda y: y.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))  # (B, H, N, hd)
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :],
                                        torch.finfo(logits.dtype).min)
        out = torch.softmax(logits, dim=-1) @ v  # (B, H, N, hd)
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class AdaLNBlock(nn.Module):
    """Pre-norm encoder block; shift/scale/gate for attention and MLP from ``mod + table``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.table = nn.Parameter(torch.zeros(6, width))

    def forward(self, x: torch.Tensor, mod: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = (mod + self.table).unbind(dim=1)
        x = x + g1[:, None, :] * self.attn(modulate(self.norm1(x), s1, sc1), key_mask)
        x = x + g2[:, None, :] * self.mlp(modulate(self.norm2(x), s2, sc2))
        return x


class MotionDiT(nn.Module):
    """x0-predicting diffusion transformer (see ``vasa_jax.motion.dit.MotionDiT``)."""

    def __init__(self, motion_dim: int, audio_dim: int, *, width: int = 512, depth: int = 8,
                 heads: int = 8, mlp_ratio: float = 4.0, window: int = 50, context: int = 10,
                 num_emotions: int = 4, dtype: str = "float32"):
        super().__init__()
        if dtype != "float32":
            raise ValueError(f"The torch MotionDiT computes in float32 only; got dtype={dtype!r}"
                             " (set model.dtype='float32').")
        self.motion_dim, self.audio_dim = motion_dim, audio_dim
        self.width, self.window, self.context = width, window, context
        self.num_emotions = num_emotions
        # Dataset statistics: saved with the weights, never trained.
        self.register_buffer("motion_mean", torch.zeros(motion_dim))
        self.register_buffer("motion_std", torch.ones(motion_dim))
        self.register_buffer("audio_mean", torch.zeros(audio_dim))
        self.register_buffer("audio_std", torch.ones(audio_dim))

        self.motion_in = nn.Linear(motion_dim, width)
        self.audio_in = EmbedMlp(audio_dim, width)
        self.null_audio = nn.Parameter(torch.empty(width))
        self.segment = nn.Embedding(2, width)
        self.position = nn.Parameter(torch.empty(context + window, width))

        self.time_mlp = EmbedMlp(width, width)
        self.gaze_mlp = EmbedMlp(2 * 2 * 8, width)
        self.distance_mlp = EmbedMlp(2 * 8, width)
        self.null_gaze = nn.Parameter(torch.empty(width))
        self.null_distance = nn.Parameter(torch.empty(width))
        self.emotion_table = nn.Embedding(num_emotions + 1, width)  # last row: null emotion

        self.block_mod = nn.Linear(width, 6 * width)
        self.blocks = nn.ModuleList([AdaLNBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.final_ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, motion_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The Flax initialisation: Xavier-uniform kernels, zero biases, N(0, 0.02) tables,
        zero adaLN projections/tables and output head (every block starts as the identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.null_audio, self.segment.weight, self.position, self.null_gaze,
                  self.null_distance, self.emotion_table.weight):
            nn.init.normal_(p, std=0.02)
        for lin in (self.block_mod, self.final_ada, self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for block in self.blocks:
            nn.init.zeros_(block.table)

    # -- normalisation -------------------------------------------------------------------------
    @torch.no_grad()
    def set_stats(self, motion_mean, motion_std, audio_mean, audio_std) -> None:
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self.motion_mean.copy_(t(motion_mean))
        self.motion_std.copy_(t(motion_std).clamp_min(1e-4))
        self.audio_mean.copy_(t(audio_mean))
        self.audio_std.copy_(t(audio_std).clamp_min(1e-4))

    def normalize_motion(self, m: torch.Tensor) -> torch.Tensor:
        return (m - self.motion_mean) / self.motion_std

    def denormalize_motion(self, m: torch.Tensor) -> torch.Tensor:
        return m * self.motion_std + self.motion_mean

    def normalize_audio(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.audio_mean) / self.audio_std

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Mapping[str, torch.Tensor],
                drop: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x_t (B, W, M), t (B,) int, cond/drop as in the JAX model -> (B, W, M) clean motion.

        cond: ``audio`` (B, W, A), ``audio_pre`` (B, K, A), ``motion_pre`` (B, K, M),
        ``gaze`` (B, 2), ``distance`` (B,), ``emotion`` (B,) int. drop: per-condition (B,)
        bools (True = dropped) and optionally ``audio_frames`` (B, W) (False = dropped frame).
        """
        b, w, _ = x_t.shape
        k = self.context
        dev = x_t.device
        drop = dict(drop or {})
        no = torch.zeros(b, dtype=torch.bool, device=dev)
        d = {c: torch.as_tensor(drop.get(c, no), dtype=torch.bool, device=dev)
             for c in CONDITIONS}

        audio = torch.cat([cond["audio_pre"], cond["audio"]], dim=1).float()  # (B, K+W, A)
        frame_audio = (~d["audio"])[:, None].expand(b, k + w)
        if "audio_frames" in drop:
            frames = torch.as_tensor(drop["audio_frames"], dtype=torch.bool, device=dev)
            frame_audio = frame_audio & torch.cat(
                [torch.ones(b, k, dtype=torch.bool, device=dev), frames], dim=1)
        a_emb = torch.where(frame_audio[..., None], self.audio_in(audio), self.null_audio)
        motion = torch.cat([cond["motion_pre"], x_t], dim=1).float()
        seg = torch.cat([torch.zeros(k, dtype=torch.long, device=dev),
                         torch.ones(w, dtype=torch.long, device=dev)])
        h = self.motion_in(motion) + a_emb + self.segment(seg) + self.position[: k + w]
        key_mask = torch.cat([(~d["context"])[:, None].expand(b, k),
                              torch.ones(b, w, dtype=torch.bool, device=dev)], dim=1)

        c = self.time_mlp(sinusoidal(t, self.time_mlp.fc1.in_features))
        g = self.gaze_mlp(fourier(cond["gaze"].float(), 8))
        c = c + torch.where(d["gaze"][:, None], self.null_gaze, g)
        dist = self.distance_mlp(fourier(cond["distance"].float()[:, None], 8))
        c = c + torch.where(d["distance"][:, None], self.null_distance, dist)
        emotion = torch.as_tensor(cond["emotion"], device=dev).long()
        emo = torch.where(d["emotion"] | (self.num_emotions == 0),
                          torch.full_like(emotion, self.num_emotions),
                          emotion.clamp(0, max(self.num_emotions - 1, 0)))
        c = c + self.emotion_table(emo)

        mod = self.block_mod(F.silu(c)).view(b, 6, -1)
        for block in self.blocks:
            h = block(h, mod, key_mask)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        h = modulate(self.final_norm(h[:, k:]), shift, scale)
        return self.out(h)


def make_motion_dit(model_cfg: Any) -> MotionDiT:
    """Build from a ``config.model`` ConfigDict (configs/motion.py)."""
    return MotionDiT(
        model_cfg.motion_dim, model_cfg.audio_dim, width=model_cfg.width,
        depth=model_cfg.depth, heads=model_cfg.heads, mlp_ratio=model_cfg.mlp_ratio,
        window=model_cfg.window, context=model_cfg.context,
        num_emotions=model_cfg.num_emotions, dtype=model_cfg.dtype)
