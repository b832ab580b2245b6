"""SyncNet lip-sync instrument (after Chung & Zisserman 2016, "Out of time: automated lip sync in
the wild") and the LSE-C / LSE-D scores of Wav2Lip's evaluation.

Two branches embed a 5-frame video window and its 0.2 s of audio into one space; in sync they
are close. The layout is the published ``SyncNetNetwork`` (syncnet_python, ``syncnet_v2.model``):

- audio: MFCC patch (13 cepstra x 20 frames at 100 Hz) as a one-channel image -> 2-D
  conv/BN/ReLU(/max-pool) stages -> a last conv that leaves 1x1 -> FC, BN, ReLU, FC -> D;
- video: 5 stacked RGB frames -> a 3-D conv over all 5 frames (kernel (5, 7, 7), stride
  (1, 2, 2)) -> (1, k, k) conv/BN/ReLU/max-pool stages -> a last conv that leaves 1x1 -> FC, BN,
  ReLU, FC -> D.

Each stage is given by a layer spec (``("conv", out, kernel, stride, padding)`` or
``("pool", kernel, stride, padding)``; a last conv kernel ``"rest"`` covers what remains), so
one module covers two sizes (``SIZES``):

- ``original``: exactly the published network (224x224 frames, D = 1024) and its input
  convention, so ``syncnet_convert.load_torch_weights`` can load ``syncnet_v2.model``. That
  network reads **BGR** frames (OpenCV ``imread``) as float **0..255** without normalisation,
  of 224x224 face crops (syncnet_python's S3FD face tracks: the whole face, not only the mouth),
  and MFCCs of the audio read as **int16** samples; ``input_format="bgr255"`` and
  ``audio_scale=32768`` reproduce that from RGB uint8 frames and float audio in [-1, 1].
- ``small``: a narrow version for SynthTalk mouth crops (rows 24..56, columns 12..52 of a 64 px
  frame, native 32x40), trained by ``vasa_jax.train.syncnet_task``: RGB in [-1, 1], D = 128,
  L2-normalised embeddings (it is trained on cosine similarity).

Shapes: MFCC patches ``(n, 13, 20)`` float; video windows ``(n, 5, H, W, 3)`` uint8 RGB at the
model's ``image_size``; embeddings ``(n, D)`` float32. BatchNorm uses its running statistics
unless ``train`` is true (then the batch's statistics; ``train="record"`` also stores them as the
running ones, and ``calibrate_batch_stats`` averages those over many batches, as PreciseBN does).

Scores (``sync_scores``), as syncnet_python's ``calc_pdist`` + ``evaluate``: for each 5-frame
window ``i`` the Euclidean distance from its video embedding to the audio embeddings of windows
``i - vshift .. i + vshift`` (past either end: zero embeddings, as ``F.pad`` does in
syncnet_python, for the ``original`` size; the end embeddings for the ``small`` one), the mean
over windows per offset (the curve), ``LSE-D = min(curve)``, ``offset = vshift - argmin(curve)``
(positive: the video lags the audio by that many frames) and ``LSE-C = median(curve) - min``.

Use (loading: ``vasa_jax.instruments.load``)::

  net = load_syncnet("runs/syncnet")       # trained with configs/syncnet.py
  s = sync_scores(net, frames, audio)      # {"lse_c", "lse_d", "offset", "curve"}
  net.heldout["offset_accuracy"]           # report beside every number that uses it
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import max_pool

from vasa_jax.chunks import map_chunks
from vasa_jax.constants import SAMPLES_PER_FRAME
from vasa_jax.instruments import mfcc as mfcc_lib

HELDOUT_FILE = "syncnet_heldout.json"
BATCH_STATS_FILE = "syncnet_batch_stats.npz"
WINDOW = 5  # video frames per SyncNet window
MFCC_WINDOW = WINDOW * mfcc_lib.MFCC_PER_VIDEO_FRAME  # 20 MFCC columns = 0.2 s
DEFAULT_VSHIFT = 15
SHIPPED_SYNCNET = "package:syncnet_synthtalk64"  # the instrument of benchmarks/quality.py

# The published syncnet_python ``SyncNetNetwork`` layer by layer (torch Sequential indices: each
# conv is conv/BN/ReLU = 3 entries, each pool 1).
ORIGINAL_LIP = (
    ("conv", 96, (5, 7, 7), (1, 2, 2), (0, 0, 0)),
    ("pool", (1, 3, 3), (1, 2, 2), (0, 0, 0)),
    ("conv", 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
    ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv", 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("pool", (1, 3, 3), (1, 2, 2), (0, 0, 0)),
    ("conv", 512, "rest", (1, 1, 1), (0, 0, 0)),  # (1, 6, 6) at 224 px
)
ORIGINAL_AUDIO = (
    ("conv", 64, (3, 3), (1, 1), (1, 1)),
    ("pool", (1, 1), (1, 1), (0, 0)),
    ("conv", 192, (3, 3), (1, 1), (1, 1)),
    ("pool", (3, 3), (1, 2), (0, 0)),
    ("conv", 384, (3, 3), (1, 1), (1, 1)),
    ("conv", 256, (3, 3), (1, 1), (1, 1)),
    ("conv", 256, (3, 3), (1, 1), (1, 1)),
    ("pool", (3, 3), (2, 2), (0, 0)),
    ("conv", 512, "rest", (1, 1), (0, 0)),  # (5, 4)
)
def small_lip_layers(widths=(32, 64, 96, 128)):
    """The small lip stack for (5, 32, 40) mouth crops: a (5, 5, 5) conv over all frames at full
    resolution (the lips are a few pixels), then (1, 3, 3) conv/pool stages, a last conv to 1x1;
    ``widths`` = (w0, w1, w2, out)."""
    w0, w1, w2, out = (int(w) for w in widths)
    return (
        ("conv", w0, (5, 5, 5), (1, 1, 1), (0, 2, 2)),
        ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
        ("conv", w1, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
        ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
        ("conv", w2, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
        ("conv", w2, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
        ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
        ("conv", out, "rest", (1, 1, 1), (0, 0, 0)),
    )


def small_audio_layers(widths=(32, 64, 96, 128)):
    """The original audio stack's layout with ``widths`` = (w0, w1, w2, out) channels."""
    w0, w1, w2, out = (int(w) for w in widths)
    return (
        ("conv", w0, (3, 3), (1, 1), (1, 1)),
        ("pool", (1, 1), (1, 1), (0, 0)),
        ("conv", w1, (3, 3), (1, 1), (1, 1)),
        ("pool", (3, 3), (1, 2), (0, 0)),
        ("conv", w2, (3, 3), (1, 1), (1, 1)),
        ("conv", w2, (3, 3), (1, 1), (1, 1)),
        ("pool", (3, 3), (2, 2), (0, 0)),
        ("conv", out, "rest", (1, 1), (0, 0)),
    )


SMALL_LIP = small_lip_layers()
SMALL_AUDIO = small_audio_layers()
# Keyword arguments of ``SyncNetNetwork`` per named size.
SIZES: dict[str, dict[str, Any]] = {
    "original": dict(lip_layers=ORIGINAL_LIP, audio_layers=ORIGINAL_AUDIO, fc_hidden=512,
                     embed_dim=1024, image_size=(224, 224), crop=(0.0, 1.0, 0.0, 1.0),
                     input_format="bgr255", audio_scale=mfcc_lib.INT16_SCALE, normalize=False,
                     pad="zero"),
    "small": dict(lip_layers=SMALL_LIP, audio_layers=SMALL_AUDIO, fc_hidden=128, embed_dim=128,
                  image_size=(32, 40), crop=(0.375, 0.875, 0.1875, 0.8125),
                  input_format="rgb_unit", audio_scale=mfcc_lib.INT16_SCALE, normalize=True,
                  pad="edge"),
}
# Logical axis names: none has a rule in ``parallel.DEFAULT_RULES``, so SyncNet is replicated.
HIDDEN_AXES = ("syncnet_in", "syncnet_hidden")


class BatchNorm(nnx.Module):
    """BatchNorm over the last (channel) axis, PyTorch's numerics (eps 1e-5, biased variance to
    normalise). Eval (``train`` False): running ``mean``/``var``. Train: the batch's
    statistics; with ``train="record"`` they also replace the running ones (unbiased variance,
    as torch), which ``calibrate_batch_stats`` averages over batches."""

    def __init__(self, channels: int, eps: float = 1e-5):
        self.eps = float(eps)
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32), out_sharding=("conv_out",))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32), out_sharding=("conv_out",))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32), out_sharding=("conv_out",))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32), out_sharding=("conv_out",))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
            if train == "record":  # for calibrate_batch_stats (only where mutation is allowed)
                n = math.prod(x.shape[:-1])
                self.mean[...] = jax.lax.stop_gradient(mean)
                self.var[...] = jax.lax.stop_gradient(var * n / max(n - 1, 1))  # unbiased
        else:
            mean, var = self.mean[...], self.var[...]
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class _ConvBNReLU(nnx.Module):
    def __init__(self, cin: int, cout: int, kernel, stride, padding, *, rngs: nnx.Rngs):
        nd = len(kernel)
        axes = (None,) * nd + ("conv_in", "conv_out")
        self.conv = nnx.Conv(
            cin, cout, tuple(kernel), strides=tuple(stride),
            padding=tuple((int(p), int(p)) for p in padding), param_dtype=jnp.float32,
            kernel_init=nnx.with_partitioning(nnx.initializers.variance_scaling(
                2.0, "fan_in", "truncated_normal"), axes),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
            rngs=rngs)
        self.bn = BatchNorm(cout)

    def __call__(self, x, train: bool = False):
        return jax.nn.relu(self.bn(self.conv(x), train))


class _Pool(nnx.Module):
    """Max-pool (PyTorch ``MaxPool{2,3}d``: padding with -inf, floor output size)."""

    def __init__(self, kernel, stride, padding):
        self.kernel = tuple(int(k) for k in kernel)
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple((int(p), int(p)) for p in padding)

    def __call__(self, x, train: bool = False):
        del train
        if all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride):
            return x
        return max_pool(x, self.kernel, self.stride, self.padding)


def _out_size(size: Sequence[int], kernel, stride, padding) -> tuple[int, ...]:
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding))


class Branch(nnx.Module):
    """A conv/pool stack over ``in_size`` (spatial/temporal dims) with ``cin`` channels that
    ends at size 1 everywhere, then FC -> BN -> ReLU -> FC: (n, *in_size, cin) -> (n, D).

    ``layers`` items: ``("conv", out, kernel, stride, padding)`` (conv + BN + ReLU) or
    ``("pool", kernel, stride, padding)``; a kernel ``"rest"`` spans the remaining size."""

    def __init__(self, layers, in_size: Sequence[int], cin: int, fc_hidden: int, embed_dim: int,
                 *, rngs: nnx.Rngs):
        size = tuple(int(s) for s in in_size)
        mods = []
        for spec in layers:
            kind = spec[0]
            if kind == "conv":
                _, cout, kernel, stride, padding = spec
                kernel = size if kernel == "rest" else tuple(int(k) for k in kernel)
                mods.append(_ConvBNReLU(cin, int(cout), kernel, stride, padding, rngs=rngs))
                cin = int(cout)
            elif kind == "pool":
                _, kernel, stride, padding = spec
                mods.append(_Pool(kernel, stride, padding))
            else:
                raise ValueError(f"Unknown SyncNet layer {spec!r}; use 'conv' or 'pool'.")
            size = _out_size(size, kernel, stride, padding)
            if min(size) < 1:
                raise ValueError(f"SyncNet layer {spec!r} leaves size {size} from input "
                                 f"{tuple(in_size)}: the input is too small for this stack.")
        if any(s != 1 for s in size):
            raise ValueError(f"The SyncNet stack leaves size {size}, not 1 everywhere, from "
                             f"input {tuple(in_size)}; end it with a 'rest' conv.")
        self.layers = nnx.List(mods)
        self.fc1 = _dense(cin, fc_hidden, rngs=rngs)
        self.bn = BatchNorm(fc_hidden)
        self.fc2 = _dense(fc_hidden, embed_dim, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for layer in self.layers:
            x = layer(x, train)
        x = x.reshape(x.shape[0], -1)
        return self.fc2(jax.nn.relu(self.bn(self.fc1(x), train)))


def _dense(cin: int, cout: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        cin, cout, param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(nnx.initializers.variance_scaling(
            2.0, "fan_in", "truncated_normal"), HIDDEN_AXES),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (HIDDEN_AXES[1],)),
        rngs=rngs)


class SyncNetNetwork(nnx.Module):
    """SyncNet: ``audio`` and ``lip`` branches into a D-dimensional space.

    Args: ``lip_layers`` / ``audio_layers`` layer specs (see ``Branch``), ``fc_hidden`` and
    ``embed_dim`` (D) of the FC heads, ``image_size`` (H, W) of the video input,
    ``crop`` (y0, y1, x0, x1) fractions of a frame cut by ``mouth_crops`` (then resized to
    ``image_size``), ``input_format`` 'bgr255' (the original weights) or 'rgb_unit' ([-1, 1]),
    ``audio_scale`` applied to float audio before the MFCCs, ``normalize`` (L2-normalise the
    embeddings), ``pad`` the default padding of the offset search ('zero' or 'edge', see
    ``offset_distances``).
    """

    def __init__(self, *, lip_layers=SMALL_LIP, audio_layers=SMALL_AUDIO, fc_hidden: int = 128,
                 embed_dim: int = 128, image_size=(32, 40), crop=(0.0, 1.0, 0.0, 1.0),
                 input_format: str = "rgb_unit", audio_scale: float = mfcc_lib.INT16_SCALE,
                 normalize: bool = True, pad: str = "edge", rngs: nnx.Rngs):
        if input_format not in ("bgr255", "rgb_unit"):
            raise ValueError(f"input_format must be 'bgr255' or 'rgb_unit'; got {input_format!r}.")
        self.image_size = tuple(int(s) for s in image_size)
        self.crop = tuple(float(c) for c in crop)
        self.input_format = input_format
        self.audio_scale = float(audio_scale)
        self.normalize = bool(normalize)
        if pad not in ("zero", "edge"):
            raise ValueError(f"pad must be 'zero' or 'edge'; got {pad!r}.")
        self.pad = pad
        self.embed_dim = int(embed_dim)
        self.lip = Branch(lip_layers, (WINDOW,) + self.image_size, 3, fc_hidden, embed_dim,
                          rngs=rngs)
        self.audio = Branch(audio_layers, (mfcc_lib.NUM_CEPS, MFCC_WINDOW), 1, fc_hidden,
                            embed_dim, rngs=rngs)

    def _finish(self, e: jax.Array) -> jax.Array:
        e = e.astype(jnp.float32)
        if self.normalize:
            e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, -1, keepdims=True), 1e-12))
        return e

    def video_input(self, frames: jax.Array) -> jax.Array:
        """uint8 RGB (n, 5, H, W, 3) -> the network's float input (same shape)."""
        x = frames.astype(jnp.float32)
        if self.input_format == "bgr255":
            return x[..., ::-1]
        return x / 127.5 - 1.0

    def embed_audio(self, mfcc_patches: jax.Array, train: bool = False) -> jax.Array:
        """MFCC patches (n, 13, 20) -> embeddings (n, D) float32."""
        if tuple(mfcc_patches.shape[1:]) != (mfcc_lib.NUM_CEPS, MFCC_WINDOW):
            raise ValueError(f"Expected MFCC patches (n, 13, 20); got {mfcc_patches.shape}.")
        return self._finish(self.audio(mfcc_patches.astype(jnp.float32)[..., None], train))

    def embed_video(self, frames: jax.Array, train: bool = False) -> jax.Array:
        """uint8 RGB windows (n, 5, H, W, 3) at ``image_size`` -> embeddings (n, D) float32."""
        if tuple(frames.shape[1:]) != (WINDOW,) + self.image_size + (3,):
            raise ValueError(f"Expected video windows (n, 5, {self.image_size[0]}, "
                             f"{self.image_size[1]}, 3); got {frames.shape}. Cut them with "
                             f"mouth_crops.")
        return self._finish(self.lip(self.video_input(frames), train))

    def __call__(self, frames, mfcc_patches, train: bool = False):
        """((n, 5, H, W, 3) uint8, (m, 13, 20)) -> ((n, D), (m, D))."""
        return self.embed_video(frames, train), self.embed_audio(mfcc_patches, train)


def make_syncnet(model_config=None, *, size: str | None = None, rngs: nnx.Rngs,
                 **overrides) -> SyncNetNetwork:
    """A ``SyncNetNetwork`` of a named ``size`` ('original' or 'small'), or from ``config.model``
    (``size`` plus optional overrides of any ``SIZES`` key, or ``lip_widths`` /
    ``audio_widths`` for the small layout at other widths)."""
    kw: dict[str, Any] = {}
    if model_config is not None:
        size = model_config.get("size", size)
        kw = {k: _untuple(v) for k, v in model_config.items() if k != "size"}
    kw.update(overrides)
    if "lip_widths" in kw:  # the small layout at other widths
        kw["lip_layers"] = small_lip_layers(kw.pop("lip_widths"))
    if "audio_widths" in kw:
        kw["audio_layers"] = small_audio_layers(kw.pop("audio_widths"))
    if size not in SIZES:
        raise ValueError(f"Unknown SyncNet size {size!r}; use one of {sorted(SIZES)}.")
    args = dict(SIZES[size])
    args.update(kw)
    return SyncNetNetwork(**args, rngs=rngs)


def _untuple(v):
    """ml_collections gives lists back for tuples in some paths; layer specs need tuples."""
    if isinstance(v, list):
        return tuple(_untuple(x) for x in v)
    if isinstance(v, tuple):
        return tuple(_untuple(x) for x in v)
    return v


# -- preprocessing -------------------------------------------------------------------------------

def mouth_crops(frames: np.ndarray, crop, image_size) -> np.ndarray:
    """frames (T, R, R', 3) uint8 -> (T, H, W, 3) uint8: rows ``[y0 R, y1 R)`` and columns
    ``[x0 R', x1 R')`` of each frame (``crop`` = (y0, y1, x0, x1)), resized to ``image_size``
    (H, W) when it differs (area filter down, bilinear up)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"Expected uint8 RGB frames (T, R, R, 3); got {frames.shape} "
                         f"{frames.dtype}.")
    h, w = frames.shape[1:3]
    y0, y1, x0, x1 = crop
    out = frames[:, int(round(y0 * h)):int(round(y1 * h)), int(round(x0 * w)):int(round(x1 * w))]
    th, tw = image_size
    if out.shape[1:3] != (th, tw):
        interp = cv2.INTER_AREA if out.shape[1] > th else cv2.INTER_LINEAR
        out = np.stack([cv2.resize(f, (tw, th), interpolation=interp) for f in out])
    return np.ascontiguousarray(out)


def video_windows(crops: np.ndarray, starts) -> np.ndarray:
    """(T, H, W, 3) -> (n, 5, H, W, 3): the 5 frames from each of ``starts`` (n,)."""
    idx = np.asarray(starts, np.int64)[:, None] + np.arange(WINDOW)[None, :]
    return crops[idx]


# -- inference wrapper ---------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0, 3))
def _embed(graphdef, state, x, kind: str):
    model = nnx.merge(graphdef, state)
    return model.embed_video(x) if kind == "video" else model.embed_audio(x)


class SyncNet:
    """A SyncNet on this host: jit-compiled ``embed_audio`` / ``embed_video`` (NumPy in and out,
    in chunks), its crop setting, and ``heldout`` metrics (from ``syncnet_heldout.json``)."""

    def __init__(self, model: SyncNetNetwork, *, heldout: dict[str, Any] | None = None,
                 step: int | None = None, config=None, chunk_size: int | None = None):
        self.graphdef, self.state = nnx.split(model)
        self.image_size, self.crop = model.image_size, model.crop
        self.audio_scale, self.embed_dim = model.audio_scale, model.embed_dim
        self.pad = model.pad
        self.heldout = dict(heldout or {})
        if chunk_size is None:  # windows per compiled call (224 px windows are large)
            chunk_size = 128 if math.prod(self.image_size) <= 64 * 64 else 16
        self.step, self.config, self.chunk_size = step, config, int(chunk_size)

    def _run(self, x: np.ndarray, kind: str) -> np.ndarray:
        out = map_chunks(lambda c: _embed(self.graphdef, self.state, c, kind), x,
                         chunk_size=self.chunk_size)
        return (np.zeros((0, self.embed_dim), np.float32) if out is None
                else out.astype(np.float32))

    def embed_audio(self, mfcc_patches) -> np.ndarray:
        """MFCC patches (n, 13, 20) -> (n, D) float32."""
        return self._run(np.asarray(mfcc_patches, np.float32), "audio")

    def embed_video(self, frames) -> np.ndarray:
        """uint8 RGB windows (n, 5, H, W, 3) at ``image_size`` -> (n, D) float32."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise ValueError(f"SyncNet video windows must be uint8 RGB; got {frames.dtype}.")
        return self._run(frames, "video")


def as_instrument(model) -> SyncNet:
    """A ``SyncNetNetwork`` wrapped as a ``SyncNet``; anything else (a ``SyncNet``, or an object
    with the same ``crop``/``image_size``/``audio_scale``/``pad``/``embed_*``) as it is."""
    return SyncNet(model) if isinstance(model, SyncNetNetwork) else model


# -- LSE-C / LSE-D --------------------------------------------------------------------------------

def offset_distances(video_emb: np.ndarray, audio_emb: np.ndarray, vshift: int = DEFAULT_VSHIFT,
                     pad: str = "zero") -> np.ndarray:
    """syncnet_python's ``calc_pdist``: video (n, D), audio (n, D) -> distances (n, 2 vshift + 1)
    where column j holds ``|| v_i - a_{i + j - vshift} + 1e-6 ||`` (torch ``pairwise_distance``).
    Past either end the audio embedding is zero (``pad='zero'``, as ``F.pad`` there) or the end
    one (``pad='edge'``)."""
    v = np.asarray(video_emb, np.float64)
    a = np.asarray(audio_emb, np.float64)
    if v.shape != a.shape or v.ndim != 2:
        raise ValueError(f"Expected video and audio embeddings of one shape (n, D); got "
                         f"{v.shape} and {a.shape}.")
    if pad not in ("zero", "edge"):
        raise ValueError(f"pad must be 'zero' or 'edge'; got {pad!r}.")
    n = len(v)
    ap = np.pad(a, ((vshift, vshift), (0, 0)), mode="constant" if pad == "zero" else "edge")
    idx = np.arange(n)[:, None] + np.arange(2 * vshift + 1)[None, :]
    return np.sqrt(np.square(v[:, None, :] - ap[idx] + 1e-6).sum(-1))


def scores_from_embeddings(video_emb: np.ndarray, audio_emb: np.ndarray,
                           vshift: int = DEFAULT_VSHIFT, pad: str = "zero") -> dict[str, Any]:
    """syncnet_python's ``evaluate`` on embeddings (n, D) of the n 5-frame windows:
    ``curve`` (2 vshift + 1,) mean distance per offset, ``lse_d`` = min, ``offset`` =
    vshift - argmin (first minimum), ``lse_c`` = median - min, ``dists`` (n, 2 vshift + 1)."""
    dists = offset_distances(video_emb, audio_emb, vshift, pad)
    curve = dists.mean(0)
    j = int(np.argmin(curve))
    return {"lse_c": float(np.median(curve) - curve[j]), "lse_d": float(curve[j]),
            "offset": int(vshift - j), "curve": curve.astype(np.float32), "dists": dists}


def clip_inputs(net: SyncNet, frames: np.ndarray, audio: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """frames (T, R, R, 3) uint8 and audio (T * 640,) float32 at 16 kHz -> the n = T' - 5
    video windows (n, 5, H, W, 3) and MFCC patches (n, 13, 20), T' = min(T, len(audio) // 640)
    (syncnet_python's ``lastframe``)."""
    frames = np.asarray(frames)
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"Expected mono audio (n,) at 16 kHz; got {audio.shape}.")
    t = min(len(frames), len(audio) // SAMPLES_PER_FRAME)
    if t <= WINDOW:
        raise ValueError(f"SyncNet needs more than {WINDOW} frames with audio; got {len(frames)} "
                         f"frames and {len(audio)} samples ({t} frames).")
    n = t - WINDOW
    crops = mouth_crops(frames[:t], net.crop, net.image_size)
    mf = mfcc_lib.syncnet_mfcc(audio[:t * SAMPLES_PER_FRAME], net.audio_scale)
    return video_windows(crops, np.arange(n)), mfcc_lib.mfcc_patches(mf, np.arange(n),
                                                                     MFCC_WINDOW)


def sync_scores(model, frames: np.ndarray, audio: np.ndarray, vshift: int = DEFAULT_VSHIFT,
                pad: str | None = None) -> dict[str, Any]:
    """LSE-C / LSE-D of one clip: frames (T, R, R, 3) uint8 RGB, audio (T * 640,) float32 in
    [-1, 1] at 16 kHz -> ``lse_c``, ``lse_d`` (floats), ``offset`` (int frames; positive: the
    video lags), ``curve`` (2 vshift + 1,) float32. ``model``: a ``SyncNet`` or
    ``SyncNetNetwork``; frames are cut to its ``crop`` and resized to its ``image_size``; ``pad``
    defaults to the model's (``original``: 'zero', exactly syncnet_python; ``small``: 'edge')."""
    net = as_instrument(model)
    pad = net.pad if pad is None else pad
    windows, patches = clip_inputs(net, frames, audio)
    res = scores_from_embeddings(net.embed_video(windows), net.embed_audio(patches), vshift, pad)
    res.pop("dists")
    return res


# -- BatchNorm statistics --------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0,))
def _batch_stats(graphdef, state, frames, patches):
    model = nnx.merge(graphdef, state)
    model(frames, patches, train="record")
    return nnx.state(model, nnx.BatchStat)


def calibrate_batch_stats(model: SyncNetNetwork, batches) -> SyncNetNetwork:
    """PreciseBN: the mean over ``batches`` ((frames (n, 5, H, W, 3) uint8, MFCC patches
    (m, 13, 20)) pairs) of each BatchNorm's batch mean and (unbiased) variance, installed as its
    running statistics (in place; returns ``model``)."""
    graphdef, state = nnx.split(model)
    total, count = None, 0
    for frames, patches in batches:
        s = jax.device_get(_batch_stats(graphdef, state, jnp.asarray(frames),
                                        jnp.asarray(patches, jnp.float32)))
        total = s if total is None else jax.tree.map(np.add, total, s)
        count += 1
    if not count:
        raise ValueError("No batches to calibrate SyncNet's BatchNorm statistics on.")
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(x / count, jnp.float32), total))
    return model


def batch_stats_dict(model: SyncNetNetwork) -> dict[str, np.ndarray]:
    """The running statistics as a flat {path: array} dict (for ``BATCH_STATS_FILE``)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
    return {"/".join(str(k) for k in path): np.asarray(v.get_value() if hasattr(v, "get_value")
                                                       else v.value)
            for path, v in flat}


def load_batch_stats(model: SyncNetNetwork, stats: dict[str, np.ndarray]) -> None:
    """Install ``batch_stats_dict`` output into ``model`` (every BatchNorm must be present)."""
    state = nnx.state(model, nnx.BatchStat)
    flat = nnx.to_flat_state(state)
    missing = [p for p, _ in flat if "/".join(str(k) for k in p) not in stats]
    if missing:
        raise ValueError(f"Batch statistics missing for {missing[:4]} (of {len(missing)}).")
    for path, v in flat:
        arr = np.asarray(stats["/".join(str(k) for k in path)], np.float32)
        if arr.shape != tuple(v.shape):
            raise ValueError(f"Batch statistic {path} has shape {arr.shape}, expected {v.shape}.")
        v.set_value(jnp.asarray(arr)) if hasattr(v, "set_value") else setattr(v, "value", arr)
    nnx.update(model, nnx.from_flat_state(flat))
