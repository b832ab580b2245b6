"""SynthTalk's rendered cross-reenactment targets (``loss.cross_render``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.latent import get_config
from data_pipeline.loader import make_loader
from vasa_jax.latent import cross_render
from data_pipeline.views import pair_loader_config
from vasa_jax.latent.objective import generator_loss_terms
from vasa_jax.train.latent_task import LatentTask


def _config(data_dir, **loss):
    c = get_config("test")
    c.data.data_dir = data_dir
    c.data.other_clip_driver = 0.5
    c.loss.cross_render = True
    c.loss.aux_fraction = 0.5
    for k, v in loss.items():
        c.loss[k] = v
    return c


def _batch(c, n=8):
    cfg = pair_loader_config(c, split="train", train=True, batch_size=n)
    return next(iter(make_loader(cfg)))


def test_a_rows_own_driver_renders_to_its_stored_frame(synthtalk_tiny):
    """The target of (identity i, motion of i's own driver, its clip's emotion, i's mirror
    flag) is the stored driver frame itself, mirrored or not, drivers from the same clip or
    another: so the cross targets of other drivers are the frames SynthTalk would have made."""
    c = _config(synthtalk_tiny)
    task = LatentTask(c)
    task.prepare()
    batch = _batch(c)
    assert set(np.asarray(batch["mirrored"]).tolist()) == {0, 1}  # both cases are covered
    inputs = task.device_batch(batch)["cross"]
    got = cross_render.render_targets(jnp.asarray(batch["motion"][:, 1]), inputs["appearance"],
                                      inputs["style"], inputs["mirrored"], resolution=64)
    want = np.asarray(batch["frames"][:, 1], np.float32) / 127.5 - 1.0
    # PNG frames are lossless: equal up to the renderer's float differences (< 1 level).
    assert np.abs(np.asarray(got) - want).max() <= 1.01 / 127.5


def test_cross_rows_join_the_reconstruction_terms(synthtalk_tiny):
    c = _config(synthtalk_tiny, mouth_l1=5.0)
    task = LatentTask(c)
    task.prepare()
    db = task.device_batch(_batch(c, 4))
    model = task.make_model(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        total, *aux = generator_loss_terms(nnx.merge(graphdef, p, rest), db["frames"], c.loss,
                                           motion=db["motion"], mouth=db["mouth"],
                                           cross=db["cross"])
        return total, aux

    (_, (metrics, fake, real)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert fake.shape == (4 * 2 + 2, 64, 64, 3) and real.shape == fake.shape
    assert {"cross_render_psnr", "mouth_l1", "motion_l1"} <= set(metrics)
    assert all(bool(jnp.isfinite(v)) for v in metrics.values())
    # The extra rows are the renders of the sources' identities with the previous rows' drivers.
    prev = lambda x: np.roll(np.asarray(x), 1, axis=0)[:2]  # noqa: E731
    want = cross_render.render_targets(
        jnp.asarray(prev(db["motion"][:, 1])),
        jax.tree.map(lambda v: v[:2], db["cross"]["appearance"]), jnp.asarray(prev(
            db["cross"]["style"])), db["cross"]["mirrored"][:2], resolution=64)
    np.testing.assert_allclose(np.asarray(real[8:]), np.asarray(want), atol=1e-6)
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(g))


def test_cross_render_refuses_what_it_cannot_render(synthtalk_tiny, tmp_path):
    c = _config(synthtalk_tiny)
    c.data.colour_jitter = 0.1
    with pytest.raises(ValueError, match="colour_jitter"):
        LatentTask(c).prepare()
    c = _config(synthtalk_tiny)
    c.data.dataset = "voxceleb2"
    with pytest.raises(ValueError, match="renders SynthTalk"):
        LatentTask(c).prepare()
    with pytest.raises(ValueError, match="seed"):
        cross_render.dataset_seed(tmp_path)
