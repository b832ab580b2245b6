"""The SynthTalk probe: a small CNN that reads the motion and the emotion off single frames.

It is a measuring instrument. Trained on SynthTalk frames (``vasa_jax.train.probe_task``), it
regresses the frame's 12-d ground-truth motion track (``MOTION_FIELDS``: yaw, pitch, roll, tx, ty,
scale, jaw_open, lip_width, lip_round, blink, gaze_x, gaze_y) and classifies the clip's emotion
(``EMOTIONS``). The evaluation suite runs it on *generated* frames to check that, e.g., a
reenacted face shows the driver's jaw opening and head yaw. Its own accuracy on identities never
seen in training (the ``test`` split; ``heldout_metrics``) is stored beside the weights in
``probe_heldout.json`` and must be reported wherever its numbers are used.

Input frames: ``(..., R, R, 3)`` with R divisible by 16; ``uint8`` in [0, 255], or floating
point in [-1, 1] (the generators' image convention, ``vasa_jax.latent.model``).

Architecture: the normalised image plus two coordinate channels (so that position survives the
global pooling: tx, ty and yaw are positions), then one stride-2 conv3x3 + GroupNorm + GELU
stage per entry of ``widths`` (each followed by ``blocks - 1`` residual conv3x3 units; optionally
after a full-resolution ``stem`` unit), global average pooling, and an MLP head giving the motion
in normalised units and the emotion logits. The dataset's motion mean/std live in non-trained
``Stat`` variables (saved with the checkpoint), so ``predict_motion`` returns physical units.
``Probe.predict`` averages each frame's reading with its mirror image's (un-mirrored) by default.

Not every field is readable: at 64 px the pupils and eyelids are a pixel or two, and the
``synthtalk64`` probe reads blink and gaze at chance (held-out r ~ 0). Use a field only where
``heldout['r/<field>']`` says it is measured.

Use (loading: ``vasa_jax.instruments.load``)::

  probe = load_probe("runs/probe")          # trained with configs/probe.py
  probe = load_probe(SHIPPED_PROBE)         # the shipped instrument (vasa_jax/assets)
  out = probe.predict(frames)               # {"motion": (n, 12), "emotion": (n,), ...}
  probe.heldout["r/jaw_open"]               # report beside every number that uses it
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.synthtalk.motion import EMOTIONS, MOTION_FIELDS
from vasa_jax.chunks import map_chunks
from vasa_jax.nn.layers import MotionStats, dense, dtype_of, set_mean_std, stat

HELDOUT_FILE = "probe_heldout.json"
# The shipped measuring probe and the shipped motion estimator (same architecture, another
# seed; stage 1's ``model.motion_source = "estimator"``), in vasa_jax/assets.
SHIPPED_PROBE = "package:probe_synthtalk64"
SHIPPED_ESTIMATOR = "package:estimator_synthtalk64"
# Logical axis names of the probe's parameters; none of them is in ``parallel.DEFAULT_RULES``,
# so the (small) probe is replicated on every mesh.
CONV_AXES = (None, None, "conv_in", "conv_out")


def _conv(cin: int, cout: int, stride: int, *, rngs: nnx.Rngs, dtype) -> nnx.Conv:
    return nnx.Conv(
        cin, cout, (3, 3), strides=stride, padding="SAME", dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(nnx.initializers.variance_scaling(
            2.0, "fan_in", "truncated_normal"), CONV_AXES),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs)


def _norm(channels: int, kind: str, *, rngs: nnx.Rngs, dtype) -> nnx.Module:
    """GroupNorm (``group``: statistics per example over space and channel groups) or LayerNorm
    (``layer``: per pixel over the channels)."""
    if kind == "layer":
        return nnx.LayerNorm(
            channels, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("conv_out",)),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
            rngs=rngs)
    if kind != "group":
        raise ValueError(f"Unknown probe norm {kind!r}; use 'group' or 'layer'.")
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nnx.GroupNorm(
        channels, num_groups=groups, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("conv_out",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs)


class _ConvUnit(nnx.Module):
    """conv3x3 (stride 1 or 2) -> GroupNorm -> GELU; residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, *, rngs: nnx.Rngs, dtype):
        self.residual = stride == 1 and cin == cout
        self.conv = _conv(cin, cout, stride, rngs=rngs, dtype=dtype)
        self.norm = _norm(cout, norm, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.gelu(self.norm(self.conv(x)))
        return x + y if self.residual else y


def to_unit_range(frames: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]; floating input is taken to be in [-1, 1] already."""
    if jnp.issubdtype(frames.dtype, jnp.integer):
        return frames.astype(jnp.float32) / 127.5 - 1.0
    return frames.astype(jnp.float32)


class ProbeNetwork(MotionStats, nnx.Module):
    """frames (b, R, R, 3) -> (motion (b, M) in normalised units, emotion logits (b, E)).

    Args: ``widths`` per stride-2 stage (R must be divisible by 2 ** len(widths)), ``blocks``
    conv units per stage (the first downsamples), ``stem`` channels of a full-resolution conv
    unit before the stages (0: none), ``head`` hidden width, ``norm`` 'group' or 'layer', ``motion_dim`` M,
    ``num_emotions`` E, ``dtype`` of the activations ('float32'/'bfloat16').
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), *, blocks: int = 1,
                 stem: int = 0, head: int = 256, norm: str = "group", motion_dim: int = len(MOTION_FIELDS),
                 num_emotions: int = len(EMOTIONS), dtype: str = "float32", rngs: nnx.Rngs):
        widths = tuple(int(w) for w in widths)
        if not widths or blocks < 1:
            raise ValueError(f"The probe needs at least one stage and one block per stage; got "
                             f"widths={widths}, blocks={blocks}.")
        dt = dtype_of(dtype)
        self.motion_dim, self.num_emotions = motion_dim, num_emotions
        self.downsample = 2 ** len(widths)
        units, cin = [], 3 + 2  # RGB + (x, y) coordinates
        if stem:  # a full-resolution unit first (fine detail: pupils, eyelids, lips)
            units.append(_ConvUnit(cin, stem, 1, norm, rngs=rngs, dtype=dt))
            cin = stem
        for w in widths:
            units.append(_ConvUnit(cin, w, 2, norm, rngs=rngs, dtype=dt))
            units.extend(_ConvUnit(w, w, 1, norm, rngs=rngs, dtype=dt) for _ in range(blocks - 1))
            cin = w
        self.units = nnx.List(units)
        self.fc = dense(cin, head, ("conv_out", "probe_hidden"), rngs=rngs, dtype=dt)
        self.out = dense(head, motion_dim + num_emotions, ("probe_hidden", "probe_out"),
                         rngs=rngs, dtype=dt)
        self.motion_mean = stat(np.zeros(motion_dim))
        self.motion_std = stat(np.ones(motion_dim))

    # -- normalisation -------------------------------------------------------------------------
    def set_stats(self, motion_mean, motion_std) -> None:
        """Install the dataset's per-field motion mean and std (arrays of size M)."""
        set_mean_std(self.motion_mean, self.motion_std, motion_mean, motion_std, 1e-3)

    # -- forward -------------------------------------------------------------------------------
    def features(self, frames: jax.Array) -> jax.Array:
        """(b, R, R, 3) -> pooled features (b, widths[-1])."""
        b, h, w, c = frames.shape
        if c != 3 or h % self.downsample or w % self.downsample:
            raise ValueError(f"The probe takes (b, R, R, 3) frames with R divisible by "
                             f"{self.downsample}; got {frames.shape}.")
        x = to_unit_range(frames)
        ys = jnp.linspace(-1.0, 1.0, h)
        xs = jnp.linspace(-1.0, 1.0, w)
        grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)  # (h, w, 2): x, y
        x = jnp.concatenate([x, jnp.broadcast_to(grid, (b, h, w, 2))], axis=-1)
        x = x.astype(self.units[0].conv.dtype or jnp.float32)
        for unit in self.units:
            x = unit(x)
        return x.astype(jnp.float32).mean(axis=(1, 2))

    def __call__(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(b, R, R, 3) -> (normalised motion (b, M), emotion logits (b, E)), float32."""
        y = self.out(jax.nn.gelu(self.fc(self.features(frames)))).astype(jnp.float32)
        return y[:, :self.motion_dim], y[:, self.motion_dim:]

    def predict_motion(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(b, R, R, 3) -> (motion (b, M) in physical units, emotion logits (b, E))."""
        motion, logits = self(frames)
        return self.denormalize_motion(motion), logits


def make_probe(model_config, *, rngs: nnx.Rngs) -> ProbeNetwork:
    """The probe for ``config.model`` (widths, blocks, stem, head, motion_dim, num_emotions, dtype)."""
    m = model_config
    return ProbeNetwork(tuple(m.widths), blocks=m.blocks, stem=m.get("stem", 0), head=m.head,
                          norm=m.get("norm", "group"),
                          motion_dim=m.motion_dim, num_emotions=m.num_emotions, dtype=m.dtype,
                          rngs=rngs)


# -- inference wrapper -------------------------------------------------------------------------

# Motion fields whose sign flips when the image is mirrored (as in the loader's augmentation).
MIRRORED_FIELDS = ("yaw", "roll", "tx", "gaze_x")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, state, frames, flip_average: bool):
    model = nnx.merge(graphdef, state)
    if not flip_average:
        motion, logits = model.predict_motion(frames)
        return motion, jax.nn.softmax(logits, axis=-1)
    # Test-time mirror averaging: the probe was trained on mirrored frames with mirrored ground
    # truth, so the mirrored frame's prediction, un-mirrored, is a second reading.
    n = frames.shape[0]
    motion, logits = model.predict_motion(jnp.concatenate([frames, frames[:, :, ::-1]]))
    sign = jnp.array([-1.0 if f in MIRRORED_FIELDS else 1.0
                      for f in MOTION_FIELDS[:motion.shape[-1]]], jnp.float32)
    motion = 0.5 * (motion[:n] + motion[n:] * sign)
    probs = jax.nn.softmax(logits, axis=-1)
    return motion, 0.5 * (probs[:n] + probs[n:])


class Probe:
    """A trained probe on this host: ``predict`` (jit-compiled, batched in chunks) and
    ``heldout`` (its metrics on held-out identities, from ``probe_heldout.json``).

    ``flip_average`` (default True, as the held-out metrics are measured) averages each frame's
    reading with its mirror image's (un-mirrored), at twice the compute."""

    def __init__(self, model: ProbeNetwork, *, heldout: dict[str, Any] | None = None,
                 step: int | None = None, config=None, chunk_size: int = 256,
                 flip_average: bool = True):
        self.graphdef, self.state = nnx.split(model)
        self.flip_average = bool(flip_average)
        self.heldout = dict(heldout or {})
        self.step, self.config, self.chunk_size = step, config, int(chunk_size)
        self.motion_fields = MOTION_FIELDS[:model.motion_dim]
        self.emotions = EMOTIONS[:model.num_emotions]

    def predict(self, frames) -> dict[str, np.ndarray]:
        """frames (..., R, R, 3), uint8 [0, 255] or float [-1, 1] -> NumPy
        ``motion`` (..., M) float32 in physical units, ``emotion`` (...,) int (argmax) and
        ``emotion_probs`` (..., E) float32. Any number of frames: run in chunks of at most
        ``chunk_size`` (the last one padded to a power of two, so few shapes get compiled)."""
        frames = np.asarray(frames)
        if frames.ndim < 4 or frames.shape[-1] != 3:
            raise ValueError(f"Expected frames (..., R, R, 3); got {frames.shape}.")
        if not (frames.dtype == np.uint8 or np.issubdtype(frames.dtype, np.floating)):
            raise ValueError(f"Frames must be uint8 or floating point, got {frames.dtype}.")
        lead = frames.shape[:-3]
        flat = frames.reshape((-1,) + frames.shape[-3:])
        m_dim, e_dim = len(self.motion_fields), len(self.emotions)
        out = map_chunks(lambda c: _forward(self.graphdef, self.state, c, self.flip_average),
                         flat, chunk_size=self.chunk_size)
        motion, prob = ((np.zeros((0, m_dim), np.float32), np.zeros((0, e_dim), np.float32))
                        if out is None else (out[0].astype(np.float32),
                                             out[1].astype(np.float32)))
        return {"motion": motion.reshape(lead + (m_dim,)),
                "emotion": prob.argmax(-1).astype(np.int32).reshape(lead),
                "emotion_probs": prob.reshape(lead + (e_dim,))}


# -- held-out accuracy ---------------------------------------------------------------------------

def pearson_or_nan(pred: np.ndarray, true: np.ndarray, eps: float = 1e-6) -> float:
    """Pearson r; NaN when either side is (nearly) constant, where r is undefined."""
    a, b = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    if len(a) < 2 or b.std() <= eps or a.std() <= 1e-12:
        return math.nan
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def clip_metrics(probe: Probe, clips: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per-field Pearson r (``r/<field>``) and mean absolute error (``mae/<field>``) over every
    frame of ``clips``, per-frame ``emotion_accuracy``, per-clip ``emotion_accuracy_clip`` (mean
    probabilities over the clip), ``num_frames`` and ``num_clips``."""
    if not clips:
        raise ValueError("No clips to measure the probe on.")
    preds, trues, hits, clip_hits = [], [], [], []
    for c in clips:
        out = probe.predict(c["frames"])
        preds.append(out["motion"])
        trues.append(np.asarray(c["motion"], np.float32))
        hits.append(out["emotion"] == c["emotion"])
        clip_hits.append(int(out["emotion_probs"].mean(0).argmax()) == c["emotion"])
    pred, true = np.concatenate(preds), np.concatenate(trues)
    res: dict[str, float] = {}
    for j, name in enumerate(probe.motion_fields):
        res[f"r/{name}"] = pearson_or_nan(pred[:, j], true[:, j])
        res[f"mae/{name}"] = float(np.abs(pred[:, j] - true[:, j]).mean())
    res["emotion_accuracy"] = float(np.concatenate(hits).mean())
    res["emotion_accuracy_clip"] = float(np.mean(clip_hits))
    res["num_frames"] = int(len(pred))
    res["num_clips"] = len(clips)
    return res


def heldout_metrics(probe: Probe, config, split: str = "test", max_clips: int | None = None
                    ) -> dict[str, float]:
    """``clip_metrics`` over whole clips (every frame) of ``split`` (default ``test``:
    identities never seen in training); ``max_clips`` None/0 = all. Fields whose ground truth
    is constant in the split get r = NaN (null in JSON)."""
    from data_pipeline.views import read_clips

    return clip_metrics(probe, read_clips(config, split, max_clips, frames=True))


def format_heldout(heldout: dict[str, Any]) -> str:
    """A small text table of held-out metrics (field, r, MAE) plus the emotion accuracy."""
    lines = [f"{'field':<10} {'r':>7} {'MAE':>8}"]
    for name in MOTION_FIELDS:
        if f"r/{name}" in heldout:
            r = heldout[f"r/{name}"]
            r_s = "   nan" if r is None or (isinstance(r, float) and math.isnan(r)) else f"{r:.4f}"
            lines.append(f"{name:<10} {r_s:>7} {heldout[f'mae/{name}']:>8.4f}")
    lines.append(f"emotion accuracy: {heldout.get('emotion_accuracy', math.nan):.4f} per frame, "
                 f"{heldout.get('emotion_accuracy_clip', math.nan):.4f} per clip "
                 f"({heldout.get('num_frames', 0)} frames, {heldout.get('num_clips', 0)} clips"
                 f"{', split ' + str(heldout['split']) if 'split' in heldout else ''})")
    return "\n".join(lines)
