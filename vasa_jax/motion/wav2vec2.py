"""wav2vec 2.0 (Baevski et al. 2020, arXiv 2006.11477) in Flax NNX: the speech encoder whose
hidden states VASA-1 uses as audio features.

The network computes what Hugging Face ``transformers``' ``Wav2Vec2Model`` computes with
``output_hidden_states=True`` (in inference mode: no dropout, no SpecAugment, no LayerDrop), for
both checkpoint layouts, chosen by the checkpoint's config:

* ``base`` (e.g. facebook/wav2vec2-base-960h): feature encoder with one GroupNorm (one group per
  channel, i.e. a per-channel norm over time) after the first convolution only
  (``feat_extract_norm="group"``), no conv biases, post-norm transformer
  (``do_stable_layer_norm=False``);
* ``large`` (e.g. facebook/wav2vec2-large-960h-lv60-self): a LayerNorm over channels after every
  convolution (``feat_extract_norm="layer"``), conv biases, pre-norm transformer
  (``do_stable_layer_norm=True``) with a final LayerNorm after the last layer.

Pipeline, for audio ``(B, S)`` at 16 kHz (the model does not normalise it; HF's feature
extractor zero-means / unit-variances each utterance first when ``do_normalize``, see
``normalize_audio``):

1. feature encoder: 7 strided 1-D convolutions (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2:
   one frame per 320 samples = 20 ms, receptive field 400 samples) + GELU -> ``(B, F, 512)``;
2. feature projection: LayerNorm + Linear -> ``(B, F, hidden_size)``;
3. padded frames (from ``attention_mask``) are zeroed; a positional embedding is added: a grouped
   convolution (kernel ``num_conv_pos_embeddings``, ``num_conv_pos_embedding_groups`` groups,
   weight norm over all axes but the kernel axis, "same" padding; with an even kernel the trailing
   output frame is dropped) followed by GELU;
4. transformer encoder (``num_hidden_layers`` blocks of self-attention + GELU MLP), post-norm:
   LayerNorm before the first block, each block ``LN(x + attn(x))``, ``LN(x + mlp(x))``;
   pre-norm: each block ``x + attn(LN(x))``, ``x + mlp(LN(x))``, LayerNorm after the last.

Returned: the ``num_hidden_layers + 1`` hidden states HF returns: entry 0 is the transformer's
input (post-norm: already layer-normed; pre-norm: not), entry i the output of block i, except that
in the pre-norm layout the last entry is the output of the final LayerNorm.

Masking, as HF does when ``attention_mask`` is passed: the number of valid samples of each row,
``n = attention_mask.sum(-1)``, gives ``num_feature_frames(n)`` valid frames (the conv output-
length formula); the other frames' projected features are zeroed before the positional
convolution and are never attended to (they still get outputs, which HF does not zero either).
The convolutional encoder itself sees the padded audio as it is (HF does the same, so for the
group-norm layout the padding changes the first layer's per-channel statistics: HF's processors
for those checkpoints do not pad-and-mask, they run utterances one at a time).

Parameters are float32 and carry logical axis names (``embed``, ``mlp``, ``heads``, ``kv``;
``conv_in``/``conv_out`` for the feature encoder); ``dtype`` sets the compute dtype
(``"bfloat16"`` on accelerators; norms and softmax compute their statistics in float32). Outputs
are float32.

Weights come from HF checkpoints through ``vasa_jax.interop.wav2vec2`` (``convert_hf``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vasa_jax.nn.layers import dense, dtype_of

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
FEAT_EXTRACT_NORMS = ("group", "layer")
CONV_NORM_EPS = 1e-5  # torch's default for the feature encoder's GroupNorm / LayerNorm


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """The architecture fields of a Hugging Face ``Wav2Vec2Config`` (same names and meanings).
    Defaults are the base layout (facebook/wav2vec2-base)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False

    def __post_init__(self):
        for name in ("conv_dim", "conv_stride", "conv_kernel"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel) > 0):
            problems.append(f"conv_dim, conv_stride and conv_kernel must have the same (non-zero) "
                            f"length, got {len(self.conv_dim)}, {len(self.conv_stride)}, "
                            f"{len(self.conv_kernel)}")
        if self.feat_extract_norm not in FEAT_EXTRACT_NORMS:
            problems.append(f"feat_extract_norm={self.feat_extract_norm!r} is not one of "
                            f"{FEAT_EXTRACT_NORMS}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                problems.append(f"{name}={getattr(self, name)!r} is not supported (supported: "
                                f"{sorted(ACTIVATIONS)})")
        if self.num_attention_heads <= 0 or self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by "
                            f"num_attention_heads {self.num_attention_heads}")
        if (self.num_conv_pos_embedding_groups <= 0
                or self.hidden_size % self.num_conv_pos_embedding_groups):
            problems.append(f"hidden_size {self.hidden_size} is not divisible by "
                            f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}")
        if self.num_hidden_layers < 1:
            problems.append(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")
        if problems:
            raise ValueError("Unsupported wav2vec2 config: " + "; ".join(problems) + ".")

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def base(cls) -> "Wav2Vec2Config":
        """wav2vec2-base (94.4M parameters): group-norm encoder, post-norm, 12 x 768."""
        return cls()

    @classmethod
    def large(cls) -> "Wav2Vec2Config":
        """wav2vec2-large-lv60 layout (315M parameters): layer-norm encoder with conv biases,
        pre-norm ("stable layer norm"), 24 x 1024, 16 heads."""
        return cls(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                   intermediate_size=4096, feat_extract_norm="layer", conv_bias=True,
                   do_stable_layer_norm=True)

    @classmethod
    def tiny_large(cls) -> "Wav2Vec2Config":
        """The large layout at test size (2 x 32, 4 heads, 16-channel convs); the real conv
        kernels/strides, so frames are still 20 ms; an even positional kernel (16, 4 groups)."""
        return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, feat_extract_norm="layer", conv_bias=True,
                   do_stable_layer_norm=True, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                   num_conv_pos_embedding_groups=4)

    @classmethod
    def tiny_base(cls) -> "Wav2Vec2Config":
        """The base layout at test size (2 x 32, 4 heads, 16-channel convs, positional kernel 15
        (odd), 4 groups)."""
        return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=15,
                   num_conv_pos_embedding_groups=4)

    # -- conversion ----------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> "Wav2Vec2Config":
        """From a Hugging Face ``config.json`` dict: its architecture keys are read (missing
        ones take HF's defaults), unrelated keys (dropouts, vocab, SpecAugment, heads) ignored.
        Raises ValueError for another model type or a feature this implementation lacks
        (adapters, unknown norms or activations)."""
        model_type = d.get("model_type", "wav2vec2")
        if model_type != "wav2vec2":
            raise ValueError(f"config.json is for model_type {model_type!r}; only 'wav2vec2' "
                             "checkpoints are supported (HuBERT, WavLM, wav2vec2-conformer and "
                             "wav2vec2-bert have other architectures).")
        unsupported = []
        if d.get("add_adapter", False):
            unsupported.append("add_adapter=true (an adapter after the encoder)")
        if d.get("adapter_attn_dim") is not None:
            unsupported.append("adapter_attn_dim (per-layer attention adapters)")
        if "num_feat_extract_layers" in d and "conv_dim" in d and \
                int(d["num_feat_extract_layers"]) != len(d["conv_dim"]):
            unsupported.append(f"num_feat_extract_layers={d['num_feat_extract_layers']} differs "
                               f"from len(conv_dim)={len(d['conv_dim'])}")
        if unsupported:
            raise ValueError("Unsupported wav2vec2 config: " + "; ".join(unsupported) + ".")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v)
                      for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with HF's key names (``from_hf_dict`` reads it back)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["model_type"] = "wav2vec2"
        return d

    # -- derived -------------------------------------------------------------------------------
    @property
    def layout(self) -> str:
        """Human-readable layout: the feature-encoder norm and the transformer's norm order."""
        return (f"{self.feat_extract_norm}-norm feature encoder, "
                f"{'pre' if self.do_stable_layer_norm else 'post'}-norm transformer")

    @property
    def hop_samples(self) -> int:
        """Samples between consecutive frames (320: 20 ms at 16 kHz)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Samples that one frame of the feature encoder sees (400: 25 ms at 16 kHz); the
        shortest audio the model accepts."""
        r = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            r = (r - 1) * s + k
        return r


def num_feature_frames(config: Wav2Vec2Config, num_samples: int) -> int:
    """Frames the feature encoder makes from ``num_samples`` samples: the VALID-convolution
    length formula ``n <- floor((n - kernel) / stride) + 1`` over the conv layers (for the
    standard layout: ``floor((S - 400) / 320) + 1``, e.g. 49 for 16000 samples). Raises
    ValueError if the audio is shorter than one frame's receptive field."""
    n = int(num_samples)
    if n < config.receptive_field:
        raise ValueError(f"{n} audio samples are fewer than the {config.receptive_field} that "
                         "one wav2vec2 frame needs; pad the audio (e.g. with zeros).")
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = (n - k) // s + 1
    return n


def feature_lengths(config: Wav2Vec2Config, num_samples: jax.Array) -> jax.Array:
    """``num_feature_frames`` for an int array of sample counts (traceable), clipped at 0."""
    n = jnp.asarray(num_samples, jnp.int32)
    for k, s in zip(config.conv_kernel, config.conv_stride):
        n = jnp.floor_divide(n - k, s) + 1
    return jnp.maximum(n, 0)


def normalize_audio(audio: jax.Array, attention_mask: jax.Array | None = None,
                    padding_value: float = 0.0) -> jax.Array:
    """What HF's ``Wav2Vec2FeatureExtractor`` does when ``do_normalize``: each row
    ``(x - mean) / sqrt(var + 1e-7)`` over its valid samples (the first ``mask.sum()``), padded
    samples set to ``padding_value``. audio (B, S) or (S,), mask (B, S) -> same shape, float32."""
    x = jnp.asarray(audio, jnp.float32)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    if attention_mask is None:
        valid = jnp.ones(x.shape, bool)
    else:
        m = jnp.asarray(attention_mask)
        m = m[None] if m.ndim == 1 else m
        n = (m != 0).sum(-1, keepdims=True)
        valid = jnp.arange(x.shape[-1])[None] < n
    n = jnp.maximum(valid.sum(-1, keepdims=True), 1)
    mean = jnp.where(valid, x, 0).sum(-1, keepdims=True) / n
    var = jnp.where(valid, jnp.square(x - mean), 0).sum(-1, keepdims=True) / n
    y = jnp.where(valid, (x - mean) / jnp.sqrt(var + 1e-7), padding_value)
    return y[0] if squeeze else y


# -- layers ------------------------------------------------------------------------------------

def _conv1d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0, groups: int = 1
            ) -> jax.Array:
    """x (B, T, Cin), w (K, Cin / groups, Cout) -> (B, T', Cout) (torch Conv1d semantics)."""
    return jax.lax.conv_general_dilated(
        x, w, (stride,), [(padding, padding)], feature_group_count=groups,
        dimension_numbers=("NWC", "WIO", "NWC"))


def _layer_norm(width: int, eps: float, axis_name: str, dtype, rngs: nnx.Rngs
                ) -> nnx.LayerNorm:
    """torch-equivalent LayerNorm over the last axis (two-pass variance)."""
    return nnx.LayerNorm(
        width, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (axis_name,)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axis_name,)),
        rngs=rngs)


class ChannelGroupNorm(nnx.Module):
    """GroupNorm with one group per channel (torch ``GroupNorm(C, C)``): each channel is
    normalised over time, statistics in float32, then scaled and shifted.
    x (B, T, C) -> (B, T, C)."""

    def __init__(self, channels: int, eps: float = CONV_NORM_EPS):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((channels,)), out_sharding=("conv_out",))
        self.bias = nnx.Param(jnp.zeros((channels,)), out_sharding=("conv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = xf.mean(axis=1, keepdims=True)
        var = jnp.square(xf - mean).mean(axis=1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class Conv1d(nnx.Module):
    """A 1-D VALID convolution with kernel (K, Cin, Cout) and an optional bias (Cout,).
    x (B, T, Cin) -> (B, floor((T - K) / stride) + 1, Cout)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, use_bias: bool, *,
                 rngs: nnx.Rngs, dtype):
        init = nnx.initializers.he_normal(in_axis=(0, 1), out_axis=2)
        in_axis = "conv_in" if in_ch > 1 else None
        self.kernel = nnx.Param(init(rngs.params(), (kernel, in_ch, out_ch), jnp.float32),
                                out_sharding=(None, in_axis, "conv_out"))
        self.bias = (nnx.Param(jnp.zeros((out_ch,)), out_sharding=("conv_out",))
                     if use_bias else None)
        self.stride, self.dtype = stride, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _conv1d(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class FeatureConvLayer(nnx.Module):
    """conv -> [norm] -> activation; ``norm`` is None, "group" (per-channel GroupNorm) or
    "layer" (LayerNorm over channels). x (B, T, Cin) -> (B, T', Cout)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, use_bias: bool,
                 norm: str | None, activation: str, *, rngs: nnx.Rngs, dtype):
        self.conv = Conv1d(in_ch, out_ch, kernel, stride, use_bias, rngs=rngs, dtype=dtype)
        if norm == "group":
            self.layer_norm = ChannelGroupNorm(out_ch)
        elif norm == "layer":
            self.layer_norm = _layer_norm(out_ch, CONV_NORM_EPS, "conv_out", dtype, rngs)
        else:
            self.layer_norm = None
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(x)
        if self.layer_norm is not None:
            y = self.layer_norm(y)
        return ACTIVATIONS[self.activation](y)


class FeatureEncoder(nnx.Module):
    """The strided convolution stack. audio (B, S) -> (B, F, conv_dim[-1])."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype):
        layers = []
        in_ch = 1
        for i, (ch, k, s) in enumerate(zip(config.conv_dim, config.conv_kernel,
                                           config.conv_stride)):
            norm = ("layer" if config.feat_extract_norm == "layer"
                    else "group" if i == 0 else None)
            layers.append(FeatureConvLayer(in_ch, ch, k, s, config.conv_bias, norm,
                                           config.feat_extract_activation, rngs=rngs,
                                           dtype=dtype))
            in_ch = ch
        self.conv_layers = nnx.List(layers)
        self.dtype = dtype

    def __call__(self, audio: jax.Array) -> jax.Array:
        x = audio.astype(self.dtype)[..., None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nnx.Module):
    """LayerNorm + Linear: (B, F, conv_dim[-1]) -> (B, F, hidden_size)."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype):
        c = config.conv_dim[-1]
        self.layer_norm = _layer_norm(c, config.layer_norm_eps, "conv_out", dtype, rngs)
        self.projection = dense(c, config.hidden_size, ("conv_out", "embed"), rngs=rngs,
                                dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.projection(self.layer_norm(x))


class WeightNormConv(nnx.Module):
    """The positional convolution: grouped, "same"-padded, weight-normalised as torch's
    ``weight_norm(conv, dim=2)``: ``w[k] = weight_g[k] * weight_v[k] / ||weight_v[k]||`` (norm
    over the in/out channel axes, one gain per kernel tap). weight_v (K, C / groups, C),
    weight_g (K,), bias (C,). x (B, F, C) -> (B, F + 1 - K % 2, C) (before trimming)."""

    def __init__(self, channels: int, kernel: int, groups: int, *, rngs: nnx.Rngs, dtype):
        std = 2 * math.sqrt(1 / (kernel * channels))  # as HF initialises it
        v = std * jax.random.normal(rngs.params(), (kernel, channels // groups, channels))
        self.weight_v = nnx.Param(v, out_sharding=(None, None, "embed"))
        self.weight_g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2))),
                                  out_sharding=(None,))
        self.bias = nnx.Param(jnp.zeros((channels,)), out_sharding=("embed",))
        self.kernel_size, self.groups, self.dtype = kernel, groups, dtype

    def weight(self) -> jax.Array:
        """The effective kernel (K, C / groups, C), float32."""
        v = self.weight_v[...]
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))
        return v * (self.weight_g[...][:, None, None] / norm)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _conv1d(x.astype(self.dtype), self.weight().astype(self.dtype),
                    padding=self.kernel_size // 2, groups=self.groups)
        return y + self.bias[...].astype(self.dtype)


class PositionalConvEmbedding(nnx.Module):
    """(B, F, C) -> (B, F, C): weight-normed grouped conv, trailing frame dropped for an even
    kernel, activation."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype):
        self.conv = WeightNormConv(config.hidden_size, config.num_conv_pos_embeddings,
                                   config.num_conv_pos_embedding_groups, rngs=rngs, dtype=dtype)
        self.activation = config.feat_extract_activation

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv(x)
        if self.conv.kernel_size % 2 == 0:
            y = y[:, :-1]
        return ACTIVATIONS[self.activation](y)


class HeadsProjection(nnx.Module):
    """Linear map to heads: kernel (embed, heads, kv), bias (heads, kv).
    x (B, F, D) -> (B, F, H, Dh)."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype):
        hd = width // heads
        init = nnx.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        self.kernel = nnx.Param(init(rngs.params(), (width, heads, hd), jnp.float32),
                                out_sharding=("embed", "heads", "kv"))
        self.bias = nnx.Param(jnp.zeros((heads, hd)), out_sharding=("heads", "kv"))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("bfd,dhk->bfhk", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


class OutProjection(nnx.Module):
    """Linear map from heads: kernel (heads, kv, embed), bias (embed,).
    x (B, F, H, Dh) -> (B, F, D)."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype):
        hd = width // heads
        init = nnx.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        self.kernel = nnx.Param(init(rngs.params(), (heads, hd, width), jnp.float32),
                                out_sharding=("heads", "kv", "embed"))
        self.bias = nnx.Param(jnp.zeros((width,)), out_sharding=("embed",))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("bfhk,hkd->bfd", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


class Attention(nnx.Module):
    """Bidirectional multi-head self-attention with biases (HF ``Wav2Vec2Attention``); logits
    and softmax in float32. x (B, F, D), key_mask (B, F) bool (False: never attended to)
    -> (B, F, D)."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype):
        self.q_proj = HeadsProjection(width, heads, rngs=rngs, dtype=dtype)
        self.k_proj = HeadsProjection(width, heads, rngs=rngs, dtype=dtype)
        self.v_proj = HeadsProjection(width, heads, rngs=rngs, dtype=dtype)
        self.out_proj = OutProjection(width, heads, rngs=rngs, dtype=dtype)
        self.scale = (width // heads) ** -0.5
        self.dtype = dtype

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) * self.scale
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        return self.out_proj(jnp.einsum("bhqs,bshk->bqhk", w, v))


class FeedForward(nnx.Module):
    """Linear -> activation -> Linear: (B, F, D) -> (B, F, D)."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype):
        d, h = config.hidden_size, config.intermediate_size
        self.intermediate_dense = dense(d, h, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.output_dense = dense(h, d, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.activation = config.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.output_dense(ACTIVATIONS[self.activation](self.intermediate_dense(x)))


class EncoderLayer(nnx.Module):
    """One transformer block, post-norm (``stable=False``) or pre-norm (``stable=True``).
    x (B, F, D), key_mask (B, F) | None -> (B, F, D)."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype):
        d, eps = config.hidden_size, config.layer_norm_eps
        self.attention = Attention(d, config.num_attention_heads, rngs=rngs, dtype=dtype)
        self.layer_norm = _layer_norm(d, eps, "embed", dtype, rngs)
        self.feed_forward = FeedForward(config, rngs=rngs, dtype=dtype)
        self.final_layer_norm = _layer_norm(d, eps, "embed", dtype, rngs)
        self.stable = config.do_stable_layer_norm

    def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        if self.stable:
            x = x + self.attention(self.layer_norm(x), key_mask)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, key_mask))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nnx.Module):
    """Positional conv embedding + LayerNorm + transformer blocks.
    x (B, F, D), frame_mask (B, F) bool | None -> tuple of num_hidden_layers + 1 (B, F, D)."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype):
        self.pos_conv_embed = PositionalConvEmbedding(config, rngs=rngs, dtype=dtype)
        self.layer_norm = _layer_norm(config.hidden_size, config.layer_norm_eps, "embed", dtype,
                                      rngs)
        self.layers = nnx.List([EncoderLayer(config, rngs=rngs, dtype=dtype)
                                for _ in range(config.num_hidden_layers)])
        self.stable = config.do_stable_layer_norm

    def __call__(self, x: jax.Array, frame_mask: jax.Array | None = None
                 ) -> tuple[jax.Array, ...]:
        if frame_mask is not None:
            x = jnp.where(frame_mask[..., None], x, jnp.zeros((), x.dtype))
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        states = [x]
        for layer in self.layers:
            x = layer(x, frame_mask)
            states.append(x)
        if self.stable:
            states[-1] = self.layer_norm(x)
        return tuple(states)


class Wav2Vec2Model(nnx.Module):
    """wav2vec 2.0 encoder returning every layer's hidden states (see the module docstring).

    Args:
      config: the architecture (``Wav2Vec2Config``; ``from_hf_dict`` reads HF's config.json).
      rngs: parameter initialisation (weights normally come from ``interop.wav2vec2``).
      dtype: compute dtype, ``"float32"`` (default) or ``"bfloat16"``; parameters stay float32.
    """

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype: str = "float32"):
        dt = dtype_of(dtype)
        self.config = config
        self.dtype = dt
        self.feature_extractor = FeatureEncoder(config, rngs=rngs, dtype=dt)
        self.feature_projection = FeatureProjection(config, rngs=rngs, dtype=dt)
        self.encoder = Encoder(config, rngs=rngs, dtype=dt)

    def __call__(self, audio: jax.Array, attention_mask: jax.Array | None = None
                 ) -> tuple[jax.Array, ...]:
        """Hidden states of every layer, as HF's ``output_hidden_states=True``.

        Args:
          audio: (B, S) float waveform at 16 kHz (normalised as the checkpoint's feature
            extractor says, see ``normalize_audio``); S >= ``config.receptive_field`` (400).
          attention_mask: optional (B, S) bool or int, nonzero = real sample. Only each row's
            count of real samples is used (HF's convention: the real samples come first).

        Returns:
          ``num_hidden_layers + 1`` float32 arrays, each (B, F, hidden_size), with
          F = ``num_feature_frames(config, S)``.
        """
        audio = jnp.asarray(audio)
        if audio.ndim != 2:
            raise ValueError(f"wav2vec2 takes audio of shape (batch, samples), got "
                             f"{audio.shape}; add a batch axis with audio[None].")
        num_frames = num_feature_frames(self.config, audio.shape[1])
        frame_mask = None
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask)
            if attention_mask.shape != audio.shape:
                raise ValueError(f"attention_mask has shape {attention_mask.shape}; it must "
                                 f"match the audio's {audio.shape}.")
            lengths = feature_lengths(self.config, (attention_mask != 0).sum(-1))
            frame_mask = jnp.arange(num_frames)[None, :] < lengths[:, None]
        x = self.feature_projection(self.feature_extractor(audio))
        states = self.encoder(x, frame_mask)
        return tuple(s.astype(jnp.float32) for s in states)


def num_params(model_or_state: Any) -> int:
    """Number of parameters (floats) of a model or its state."""
    state = nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else \
        model_or_state
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))
