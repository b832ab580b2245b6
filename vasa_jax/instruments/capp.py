"""CAPP: contrastive audio-pose pretraining, VASA-1's audio-pose alignment score (sec. 4).

A measuring instrument, like the SynthTalk probe (``vasa_jax.instruments.probe``): two
encoders trained CLIP-style (``vasa_jax.train.capp_task``, symmetric InfoNCE) on real pairs of
(head pose, audio) windows of 3 s. The score of a clip is the cosine similarity of its pose
embedding and its audio embedding, averaged over its 3-s windows (VASA-1 reports ~0.47 for real
VoxCeleb2 video; a SynthTalk-trained CAPP has its own scale, so always report the instrument's
held-out figures, ``capp_heldout.json``, beside a score: the matched-pair mean is the "real
video" reference and the shuffled-audio mean is chance).

Encoders (both: input conv over time -> + positions -> pre-norm transformer encoder -> LayerNorm
-> pooling -> linear -> unit vector of size ``embed_dim``). Pooling is 'flatten' in the configs:
a few numbers per frame, concatenated in time order, so the embedding says *when* things happen
and the cosine similarity behaves like a learned cross-correlation of the two tracks; with
'mean' pooling CAPP memorised res64_small's 800 training clips and scored held-out pairs at
chance. 'flatten' fixes the window length (``window`` frames exactly).

- pose: (n, T, 3) yaw/pitch/roll in radians. Optionally centred per window (``center_pose``:
  the window's mean pose is removed, so the slow drift's offset, which no audio explains, is not
  encoded), normalised with the dataset's per-angle std, and concatenated with the normalised
  frame-to-frame differences (``pose_diffs``: the nods are fast changes). Paper: 6 layers.
- audio: (n, T, F) features of the project's audio frontend at 25 fps (the same
  ``vasa_jax.motion.audio`` frontend interface the motion stage uses; default log-mel),
  normalised per feature with dataset statistics.

The dataset statistics live in non-trained ``Stat`` variables (saved with the checkpoint).
A learned logit scale (CLIP's temperature, ``exp(log_scale)`` clipped at ``max_scale``) is used
only by the training loss.

Use (loading: ``vasa_jax.instruments.load``)::

  capp = load_capp("runs/capp")            # trained with configs/capp.py
  capp_score(capp, pose, audio)            # pose (T, 3) radians, audio (T * 640,) 16 kHz
  capp.heldout["matched_mean"], capp.heldout["shuffled_mean"]   # reference and chance
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.chunks import map_chunks
from vasa_jax.constants import FPS, SAMPLES_PER_FRAME
from vasa_jax.motion.audio import frontend_from_config
from vasa_jax.nn.attention import SelfAttention
from vasa_jax.nn.embeddings import sinusoidal
from vasa_jax.nn.layers import Mlp, dense, dtype_of, layer_norm, learned, stat

HELDOUT_FILE = "capp_heldout.json"
SHIPPED_CAPP = "package:capp_synthtalk64"  # the instrument of benchmarks/quality.py
POSE_DIM = 3  # yaw, pitch, roll (radians): the first three SynthTalk motion fields


class EncoderBlock(nnx.Module):
    """Pre-norm transformer encoder block: x + Attn(LN(x)), then x + MLP(LN(x)); (n, T, d)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, *, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        self.norm1 = layer_norm(width, rngs=rngs, dtype=dtype)
        self.attn = SelfAttention(width, heads, rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(width, rngs=rngs, dtype=dtype)
        self.mlp = Mlp(width, int(width * mlp_ratio), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x)).astype(x.dtype)
        return x + self.mlp(self.norm2(x)).astype(x.dtype)


class SequenceEncoder(nnx.Module):
    """(n, T, C) -> (n, D) unit vectors: conv1d(kernel) -> GELU -> + positions -> ``depth``
    encoder blocks -> LayerNorm -> pooling -> linear -> L2 normalisation. ``pool`` 'mean' (over
    T) or 'flatten' (a ``pool_dim``-d code per frame, concatenated in time order; T must then
    equal ``max_frames``).

    ``positions`` 'learned' (a table of ``max_frames`` rows; T <= max_frames) or 'sinusoidal'
    (any T). ``in_axis`` is the logical name of the input channels (replicated)."""

    def __init__(self, in_dim: int, *, width: int, depth: int, heads: int, mlp_ratio: float,
                 kernel: int, embed_dim: int, max_frames: int, positions: str, in_axis: str,
                 pool: str = "mean", pool_dim: int = 4, rngs: nnx.Rngs, dtype=jnp.float32):
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"Unknown CAPP positions {positions!r}; use 'learned' or "
                             f"'sinusoidal'.")
        if pool not in ("mean", "flatten"):
            raise ValueError(f"Unknown CAPP pooling {pool!r}; use 'mean' or 'flatten'.")
        self.pool = pool
        self.width, self.max_frames, self.positions = width, max_frames, positions
        self.dtype = dtype
        self.conv = nnx.Conv(
            in_dim, width, (kernel,), padding="SAME", dtype=dtype, param_dtype=jnp.float32,
            kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(),
                                              (None, in_axis, "embed")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
            rngs=rngs)
        if positions == "learned":
            self.position = learned((max_frames, width), (None, "embed"), rngs=rngs)
        self.blocks = nnx.List([EncoderBlock(width, heads, mlp_ratio, rngs=rngs, dtype=dtype)
                                for _ in range(depth)])
        self.norm = layer_norm(width, rngs=rngs, dtype=dtype)
        if pool == "flatten":  # per-frame codes kept in time order: timing is explicit
            self.frame_proj = dense(width, pool_dim, ("embed", None), rngs=rngs, dtype=dtype)
            self.out = dense(max_frames * pool_dim, embed_dim, (None, "capp_embed"), rngs=rngs,
                             dtype=dtype)
        else:
            self.out = dense(width, embed_dim, ("embed", "capp_embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (n, T, C) -> (n, D) float32, unit L2 norm."""
        n, t, _ = x.shape
        h = jax.nn.gelu(self.conv(x.astype(self.dtype)))
        if self.positions == "learned":
            if t > self.max_frames:
                raise ValueError(f"CAPP windows have at most {self.max_frames} frames "
                                 f"(learned positions); got {t}.")
            pos = self.position[...][:t]
        else:
            pos = sinusoidal(jnp.arange(t), self.width)
        h = h + pos.astype(h.dtype)[None]
        for block in self.blocks:
            h = block(h)
        if self.pool == "flatten":
            if t != self.max_frames:
                raise ValueError(f"This CAPP (flatten pooling) takes windows of exactly "
                                 f"{self.max_frames} frames; got {t}.")
            h = self.frame_proj(self.norm(h)).astype(jnp.float32).reshape(n, -1)
        else:
            h = self.norm(h).astype(jnp.float32).mean(axis=1)
        z = self.out(h.astype(self.dtype)).astype(jnp.float32)
        return z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)


class CappNetwork(nnx.Module):
    """Pose and audio encoders into one ``embed_dim``-d unit sphere, plus a learned logit scale.

    Args (``config.model``): ``audio_dim`` F (the frontend's features per frame), ``window`` T
    (frames per window; 75 = 3 s at 25 fps), ``width``/``depth``/``heads`` of the pose encoder
    (paper: 6 layers), ``audio_width``/``audio_depth``/``audio_heads`` of the audio encoder,
    ``mlp_ratio``, ``pose_kernel``/``audio_kernel`` (input conv over time; 1 = a per-frame
    projection), ``embed_dim`` D, ``pose_diffs``, ``center_pose``, ``positions``, ``pool``
    ('mean' or 'flatten') and ``pool_dim`` (see ``SequenceEncoder``),
    ``init_temperature``, ``max_scale``, ``dtype``; ``frontend`` (name, kwargs) of the audio
    frontend whose features it reads (static; ``capp_score`` builds it from this).
    """

    def __init__(self, audio_dim: int, *, window: int = 3 * FPS, width: int = 128, depth: int = 6,
                 heads: int = 4, audio_width: int = 128, audio_depth: int = 2,
                 audio_heads: int = 4, mlp_ratio: float = 2.0, pose_kernel: int = 3,
                 audio_kernel: int = 3, embed_dim: int = 64, pose_diffs: bool = True,
                 center_pose: bool = True, positions: str = "learned", pool: str = "mean",
                 pool_dim: int = 4, init_temperature: float = 0.07, max_scale: float = 100.0,
                 frontend: tuple = ("mel", ()), dtype: str = "float32", rngs: nnx.Rngs):
        dt = dtype_of(dtype)
        self.audio_dim, self.window, self.embed_dim = audio_dim, int(window), embed_dim
        self.pose_diffs, self.center_pose = bool(pose_diffs), bool(center_pose)
        self.max_scale = float(max_scale)
        self.frontend = (str(frontend[0]), tuple(tuple(kv) for kv in frontend[1]))
        self.pose_mean, self.pose_std = stat(np.zeros(POSE_DIM)), stat(np.ones(POSE_DIM))
        self.pose_diff_std = stat(np.ones(POSE_DIM))
        self.audio_mean, self.audio_std = stat(np.zeros(audio_dim)), stat(np.ones(audio_dim))
        pose_in = POSE_DIM * (2 if pose_diffs else 1)
        self.pose_encoder = SequenceEncoder(
            pose_in, width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
            kernel=pose_kernel, embed_dim=embed_dim, max_frames=self.window, positions=positions,
            in_axis="motion", pool=pool, pool_dim=pool_dim, rngs=rngs, dtype=dt)
        self.audio_encoder = SequenceEncoder(
            audio_dim, width=audio_width, depth=audio_depth, heads=audio_heads,
            mlp_ratio=mlp_ratio, kernel=audio_kernel, embed_dim=embed_dim,
            max_frames=self.window, positions=positions, in_axis="audio", pool=pool,
            pool_dim=pool_dim, rngs=rngs, dtype=dt)
        self.log_scale = nnx.Param(jnp.asarray(math.log(1.0 / init_temperature), jnp.float32))

    # -- normalisation -------------------------------------------------------------------------
    def set_stats(self, pose_mean, pose_std, pose_diff_std, audio_mean, audio_std) -> None:
        """Install dataset statistics: per-angle mean/std of the pose (3,) (of the per-window
        centred pose when ``center_pose``), std of its frame differences (3,), and per-feature
        mean/std of the audio features (F,)."""
        self.pose_mean[...] = jnp.asarray(pose_mean, jnp.float32)
        self.pose_std[...] = jnp.maximum(jnp.asarray(pose_std, jnp.float32), 1e-4)
        self.pose_diff_std[...] = jnp.maximum(jnp.asarray(pose_diff_std, jnp.float32), 1e-5)
        self.audio_mean[...] = jnp.asarray(audio_mean, jnp.float32)
        self.audio_std[...] = jnp.maximum(jnp.asarray(audio_std, jnp.float32), 1e-3)

    def pose_inputs(self, pose: jax.Array) -> jax.Array:
        """(n, T, 3) radians -> (n, T, 3 or 6) normalised encoder inputs (pose, differences)."""
        pose = pose.astype(jnp.float32)
        if self.center_pose:
            pose = pose - pose.mean(axis=1, keepdims=True)
        x = (pose - self.pose_mean[...]) / self.pose_std[...]
        if self.pose_diffs:
            d = jnp.diff(pose, axis=1, prepend=pose[:, :1]) / self.pose_diff_std[...]
            x = jnp.concatenate([x, d], axis=-1)
        return x

    def scale(self) -> jax.Array:
        """The contrastive logit scale exp(log_scale), at most ``max_scale``; scalar."""
        return jnp.minimum(jnp.exp(self.log_scale[...]), self.max_scale)

    # -- embeddings ----------------------------------------------------------------------------
    def embed_pose(self, pose: jax.Array) -> jax.Array:
        """pose (n, T, 3) yaw/pitch/roll in radians -> (n, D) unit embeddings (float32)."""
        if pose.ndim != 3 or pose.shape[-1] != POSE_DIM:
            raise ValueError(f"CAPP pose must be (n, T, 3) yaw/pitch/roll; got {pose.shape}.")
        return self.pose_encoder(self.pose_inputs(jnp.asarray(pose)))

    def embed_audio(self, features: jax.Array) -> jax.Array:
        """features (n, T, F) audio-frontend features at 25 fps -> (n, D) unit embeddings."""
        if features.ndim != 3 or features.shape[-1] != self.audio_dim:
            raise ValueError(f"CAPP audio features must be (n, T, {self.audio_dim}); got "
                             f"{features.shape}.")
        x = (jnp.asarray(features, jnp.float32) - self.audio_mean[...]) / self.audio_std[...]
        return self.audio_encoder(x)

    def __call__(self, pose: jax.Array, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(pose (n, T, 3), features (n, T, F)) -> (pose emb (n, D), audio emb (n, D))."""
        return self.embed_pose(pose), self.embed_audio(features)


def frontend_spec(audio_config) -> tuple:
    """``config.audio`` (frontend name + kwargs) -> the static (name, ((key, value), ...))."""
    a = dict(audio_config)
    name = a.pop("frontend")
    return name, tuple(sorted(a.items()))


def make_capp(config, *, rngs: nnx.Rngs) -> CappNetwork:
    """The CAPP model of ``config.model`` reading ``config.audio``'s frontend."""
    m = config.model
    return CappNetwork(m.audio_dim, window=m.window, width=m.width, depth=m.depth, heads=m.heads,
                audio_width=m.audio_width, audio_depth=m.audio_depth, audio_heads=m.audio_heads,
                mlp_ratio=m.mlp_ratio, pose_kernel=m.pose_kernel, audio_kernel=m.audio_kernel,
                embed_dim=m.embed_dim, pose_diffs=m.pose_diffs, center_pose=m.center_pose,
                positions=m.positions, pool=m.get("pool", "mean"), pool_dim=m.get("pool_dim", 4),
                init_temperature=m.init_temperature,
                max_scale=m.max_scale, frontend=frontend_spec(config.audio), dtype=m.dtype,
                rngs=rngs)


# -- inference -----------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _embed(graphdef, state, pose, features):
    model = nnx.merge(graphdef, state)
    return model.embed_pose(pose), model.embed_audio(features)


class Capp:
    """A trained CAPP on this host: jit-compiled ``embed`` and ``heldout`` (its metrics on
    held-out identities, from ``capp_heldout.json``). ``capp_score`` takes it or a ``CAPP``."""

    def __init__(self, model: CappNetwork, *, heldout: dict[str, Any] | None = None,
                 step: int | None = None, config=None):
        self.graphdef, self.state = nnx.split(model)
        self.window, self.frontend = model.window, model.frontend
        self.heldout = dict(heldout or {})
        self.step, self.config = step, config
        self._frontend = None

    def embed(self, pose, features, chunk_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """pose (n, T, 3), features (n, T, F) -> NumPy unit embeddings ((n, D), (n, D)).
        Run in chunks of at most ``chunk_size`` windows, each padded to a power of two (so few
        shapes get compiled; every window is embedded on its own, padding changes nothing)."""
        pose, features = np.asarray(pose, np.float32), np.asarray(features, np.float32)
        out = map_chunks(lambda p, f: _embed(self.graphdef, self.state, p, f), pose, features,
                         chunk_size=chunk_size)
        if out is None:
            raise ValueError("No windows to embed.")
        return out

    def audio_features(self, audio) -> np.ndarray:
        """(S,) 16 kHz audio, S a multiple of 640 -> (S / 640, F) frontend features."""
        if self._frontend is None:
            name, kwargs = self.frontend
            self._frontend = frontend_from_config({"frontend": name, **dict(kwargs)})
        return np.asarray(self._frontend(np.asarray(audio)), np.float32)


def _as_capp(model) -> Capp:
    return model if isinstance(model, Capp) else Capp(model)


def window_starts(num_frames: int, window: int, hop: int) -> list[int]:
    """First frames of the windows cut from a clip of ``num_frames``: every ``hop`` frames, plus
    one ending at the clip's last frame if the hop leaves a tail. Raises ValueError naming the
    length needed when the clip is shorter than one window."""
    if hop < 1:
        raise ValueError(f"The CAPP hop must be at least one frame; got {hop}.")
    if num_frames < window:
        raise ValueError(
            f"CAPP needs at least one window of {window} frames ({window / FPS:.2f} s at {FPS} "
            f"fps, {window * SAMPLES_PER_FRAME} audio samples at 16 kHz); the clip has "
            f"{num_frames} frames ({num_frames / FPS:.2f} s).")
    starts = list(range(0, num_frames - window + 1, hop))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def clip_windows(pose: np.ndarray, features: np.ndarray, window: int, hop: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """pose (T, 3), features (T, F) -> windows ((k, window, 3), (k, window, F))."""
    starts = window_starts(len(pose), window, hop)
    return (np.stack([pose[s:s + window] for s in starts]),
            np.stack([features[s:s + window] for s in starts]))


def capp_score(model, pose, audio, *, hop: int | None = None, features=None) -> float:
    """CAPP audio-pose alignment of one clip: the mean over its windows of the cosine similarity
    of the pose embedding and the audio embedding.

    model: a ``Capp`` (``load_capp``) or a ``CAPP`` module. pose (T, 3) yaw/pitch/roll in
    radians; audio (T * 640,) at 16 kHz (float in [-1, 1] or 16-bit PCM). The clip is cut into
    windows of ``model.window`` frames every ``hop`` frames (default: the window, i.e.
    non-overlapping; a tail is covered by one more window ending at the last frame).
    ``features`` (T, F) skips the frontend (precomputed audio features). A clip shorter than
    one window raises ValueError naming the length needed."""
    capp = _as_capp(model)
    pose = np.asarray(pose, np.float32)
    if pose.ndim != 2 or pose.shape[-1] != POSE_DIM:
        raise ValueError(f"capp_score takes pose (T, 3) yaw/pitch/roll in radians; got "
                         f"{pose.shape}.")
    t = len(pose)
    if features is None:
        audio = np.asarray(audio)
        if audio.ndim != 1 or audio.shape[0] != t * SAMPLES_PER_FRAME:
            raise ValueError(f"capp_score takes audio (T * {SAMPLES_PER_FRAME},) at 16 kHz "
                             f"aligned with the pose: T = {t} frames need "
                             f"{t * SAMPLES_PER_FRAME} samples, got shape {audio.shape}.")
        window_starts(t, capp.window, 1)  # the too-short error before any audio work
        features = capp.audio_features(audio)
    features = np.asarray(features, np.float32)
    if len(features) != t:
        raise ValueError(f"{len(features)} audio feature frames for {t} pose frames.")
    p, a = clip_windows(pose, features, capp.window, hop or capp.window)
    pe, ae = capp.embed(p, a)
    return float(np.mean(np.sum(pe * ae, axis=-1)))


# -- held-out metrics ------------------------------------------------------------------------------

def pair_metrics(capp, pose_windows: np.ndarray, feature_windows: np.ndarray, *,
                 batch: int = 32, seed: int = 0) -> dict[str, float]:
    """Metrics of aligned windows (pose (N, T, 3), features (N, T, F), row i = one pair):

    ``matched_mean``/``matched_std``: cosine similarity of matched pairs; ``shuffled_mean``:
    of each pose with the audio of another, randomly chosen window (a derangement; chance);
    ``offdiag_mean``: mean of every mismatched pair's similarity (chance, exactly);
    ``top1``/``top5`` (pose -> audio) and ``top1_audio_to_pose``: retrieval accuracy within
    consecutive groups of ``batch`` pairs (a last partial group is left out; fewer than
    ``batch`` pairs make one group; ``chance_top1`` = 1 / group size); ``num_pairs``."""
    capp = _as_capp(capp)
    n = len(pose_windows)
    if n < 2:
        raise ValueError(f"CAPP pair metrics need at least 2 pairs; got {n}.")
    pe, ae = capp.embed(pose_windows, feature_windows)
    sim = pe @ ae.T
    matched = np.diag(sim)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    fixed = perm == np.arange(n)
    while fixed.any():  # a derangement: no pose keeps its own audio
        perm = rng.permutation(n)
        fixed = perm == np.arange(n)
    shuffled = sim[np.arange(n), perm]
    off = sim[~np.eye(n, dtype=bool)]
    top1, top5, top1_a, chance = [], [], [], []
    size = min(batch, n)
    for s in range(0, n - size + 1, size):
        e = s + size
        block = sim[s:e, s:e]
        rank = (block > np.diag(block)[:, None]).sum(axis=1)  # audios beating the true one
        rank_a = (block > np.diag(block)[None, :]).sum(axis=0)
        top1.extend(rank < 1)
        top5.extend(rank < 5)
        top1_a.extend(rank_a < 1)
        chance.extend([1.0 / (e - s)] * (e - s))
    return {"matched_mean": float(matched.mean()), "matched_std": float(matched.std()),
            "shuffled_mean": float(shuffled.mean()), "shuffled_std": float(shuffled.std()),
            "offdiag_mean": float(off.mean()), "top1": float(np.mean(top1)),
            "top5": float(np.mean(top5)), "top1_audio_to_pose": float(np.mean(top1_a)),
            "chance_top1": float(np.mean(chance)), "batch": int(size), "num_pairs": int(n),
            "gap": float(matched.mean() - shuffled.mean())}


def format_heldout(h: dict[str, Any]) -> str:
    """One line per figure of ``capp_heldout.json``."""
    return (f"CAPP held-out ({h.get('num_pairs', 0)} windows, split {h.get('split', '?')}): "
            f"matched {h.get('matched_mean', math.nan):.4f} "
            f"+- {h.get('matched_std', math.nan):.4f}, "
            f"shuffled audio {h.get('shuffled_mean', math.nan):.4f} (off-diagonal "
            f"{h.get('offdiag_mean', math.nan):.4f}); top-1 {h.get('top1', math.nan):.3f}, "
            f"top-5 {h.get('top5', math.nan):.3f} within batches of {h.get('batch', 0)} "
            f"(chance top-1 {h.get('chance_top1', math.nan):.3f})")
