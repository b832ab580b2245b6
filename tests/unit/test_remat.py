"""Rematerialisation (``model.remat``) changes memory, not values: the same loss and gradients
for both stages' ``test`` models."""

import jax
import numpy as np
import pytest
from flax import nnx

from vasa_jax import models
from vasa_jax.nn.remat import BLOCKS
from vasa_jax.train.run import load_config


def _grads(config, batch_fn):
    model = nnx.jit(lambda: models.build_model(config))()  # eager init compiles op by op
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, batch):
        def loss(s):
            return batch_fn(nnx.merge(graphdef, s), batch)
        return jax.value_and_grad(loss)(state)

    return model, f


def _motion_loss(model, batch):
    import jax.numpy as jnp

    b = batch["x"].shape[0]
    k = model.context
    cond = {"audio": batch["a"][:, k:], "audio_pre": batch["a"][:, :k],
            "motion_pre": batch["x"][:, :k],
            "gaze": jnp.zeros((b, 2)), "distance": jnp.zeros((b,)),
            "emotion": jnp.zeros((b,), jnp.int32)}
    out = model(batch["x"][:, k:], jnp.full((b,), 10), cond)
    return (out ** 2).mean()


def _latent_loss(model, batch):
    from vasa_jax.latent.model import to_unit

    frames = to_unit(batch["frames"])
    v_app, z_id = model.encode_appearance(frames[:, 0])
    pose, dyn = model.encode_motion(frames[:, 1])
    return ((model.decode(v_app, z_id, pose, dyn) - frames[:, 1]) ** 2).mean()


@pytest.mark.parametrize("stage", ["motion", "latent"])
def test_remat_gives_the_same_loss_and_gradients(stage):
    rng = np.random.default_rng(0)
    if stage == "motion":
        c = load_config("motion", "test")
        m = c.model
        batch = {"x": rng.normal(size=(2, m.context + m.window, m.motion_dim)).astype(np.float32),
                 "a": rng.normal(size=(2, m.context + m.window, m.audio_dim)).astype(np.float32)}
        loss_fn = _motion_loss
    else:
        c = load_config("latent", "test")
        r = c.model.resolution
        batch = {"frames": rng.integers(0, 256, (2, 2, r, r, 3), dtype=np.uint8)}
        loss_fn = _latent_loss
    plain_model, plain = _grads(c, loss_fn)
    c.model.remat = True
    remat_model, remat = _grads(c, loss_fn)
    blocks = [m for _, m in nnx.iter_graph(remat_model) if isinstance(m, BLOCKS)]
    assert blocks and all(b.remat for b in blocks)
    assert not any(m.remat for _, m in nnx.iter_graph(plain_model) if isinstance(m, BLOCKS))
    (l0, g0), (l1, g1) = plain(nnx.state(plain_model), batch), remat(nnx.state(remat_model),
                                                                     batch)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
