"""Stage 1 through the shared trainer: it learns, its checkpoint restores, it trains sharded on
an 8-device mesh with the losses of the data-parallel run, and its evaluation runs."""

import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from trainer_configs import make_test_config

from configs.latent import get_config
from vasa_jax.models import restore_model
from vasa_jax.train.latent_task import LatentTask
from vasa_jax.train.trainer import Trainer, read_metrics

STEPS = 40


# The ``test`` config with the guided recipe's switches (synthtalk64_guided): the sharp 2-D
# path, G2D conditioned on z_dyn, pose and expression guidance and the mouth L1 all train here.
GUIDED = {"model.skip_channels": 4, "model.g2d_dyn_cond": True, "model.expression_readout": 16,
          "loss.pose_guide": 1.0, "loss.expression_guide": 1.0, "loss.mouth_l1": 5.0}


def _config(data_dir, **over):
    return make_test_config(get_config, data_dir, **dict(GUIDED, **over))


@pytest.fixture(scope="module")
def trained(synthtalk_tiny, tmp_path_factory):
    """The ``test`` config trained for STEPS steps on one device (the sharded test below runs
    the same global batch on 8), asynchronous checkpoints at STEPS / 2 and STEPS."""
    workdir = str(tmp_path_factory.mktemp("latent"))
    c = _config(synthtalk_tiny, num_devices=1,  # stage 1 compiles ~3x faster on one device
                **{"train.steps": STEPS, "optim.decay_steps": STEPS,
                   "train.checkpoint_every": STEPS // 2, "train.async_checkpoints": True,
                   "train.image_every": STEPS, "train.eval_every": STEPS})
    trainer = Trainer(LatentTask(c), c, workdir)
    result = trainer.fit()
    return trainer, workdir, result


def _series(workdir, key):
    return {r["step"]: r[key] for r in read_metrics(workdir) if key in r}


def test_training_lowers_the_reconstruction_loss(trained):
    _, workdir, result = trained
    l1 = _series(workdir, "l1")
    first = np.mean([l1[s] for s in range(1, 6)])
    last = np.mean([l1[s] for s in range(STEPS - 4, STEPS + 1)])
    assert last < 0.75 * first, (first, last)
    for key in ("pose_guide", "expression_guide", "mouth_l1"):  # the guided recipe's terms fall
        series = _series(workdir, key)
        early = np.mean([series[s] for s in range(1, 6)])
        late = np.mean([series[s] for s in range(STEPS - 4, STEPS + 1)])
        assert late < early, (key, early, late)
    for key in ("perceptual", "g_adv", "feature_matching", "consist", "cross_id", "d_loss"):
        assert np.isfinite(result[key]), key
    assert result["nonfinite_total"] == 0
    assert "eval/self_psnr" in result
    # The TensorBoard event file holds the image grid.
    events = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
    assert events and os.path.getsize(os.path.join(workdir, events[0])) > 10_000


@pytest.mark.reliability
def test_resume_with_the_gan_terms_on_is_bit_exact(trained, tmp_path):
    """The run's middle checkpoint resumed in another workdir to the end: the losses, both
    parameter groups (generator, discriminator), their optimiser states and the EMA equal the
    uninterrupted run's, bit for bit."""
    trainer, workdir, _ = trained
    middle = STEPS // 2
    wd = tmp_path / "resumed"
    shutil.copytree(os.path.join(workdir, "checkpoints", str(middle)),
                    wd / "checkpoints" / str(middle))
    resumed = Trainer(LatentTask(trainer.config), trainer.config, str(wd))
    resumed.fit()
    a, b = _series(workdir, "loss"), _series(str(wd), "loss")
    assert sorted(b) == list(range(middle + 1, STEPS + 1))
    for s in b:
        assert a[s] == b[s], (s, a[s], b[s])
    assert {"generator", "discriminator"} <= set(resumed.state.params)
    leaves_a, leaves_b = jax.tree.leaves(trainer.state), jax.tree.leaves(resumed.state)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_round_trip_gives_the_same_model(trained):
    trainer, workdir, _ = trained
    restored = restore_model(workdir)  # EMA generator, discriminator, statistics: no optimiser
    assert restored.step == STEPS
    for a, b in zip(jax.tree.leaves(nnx.state(trainer.host_model())),
                    jax.tree.leaves(nnx.state(restored.model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    img = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    reenact = nnx.jit(lambda m, src, drv: m.reenact(src, drv))  # eager would compile per op
    out_a = reenact(trainer.host_model(), img, img[::-1])
    out_b = reenact(restored.model, img, img[::-1])
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))


def test_sharded_mesh_trains_like_data_parallel(trained, synthtalk_tiny, tmp_path):
    """data=2 x fsdp=2 x tensor=2: convolution channels are sharded, and the first steps give
    the losses of the 8-way data-parallel run."""
    _, workdir, _ = trained
    c = _config(synthtalk_tiny, mesh_shape=(2, 2, 2),
                **{"train.steps": STEPS, "optim.decay_steps": STEPS})
    trainer = Trainer(LatentTask(c), c, str(tmp_path))
    table = trainer.param_shardings_table()
    assert any(v == "P(None, None, 'tensor', 'fsdp')" for v in table.values()), table
    reference = _series(workdir, "loss")
    data = iter(trainer.task.train_loader())
    for step in (1, 2):
        loss = float(trainer.train_step(next(data))["loss"])
        assert abs(loss - reference[step]) <= 1e-4 * max(1.0, abs(reference[step])), (
            step, loss, reference[step])


def test_evaluation_report_on_two_identities(trained, synthtalk_tiny, tmp_path):
    from vasa_jax.eval.latent_eval import PROBED_FIELDS, evaluate_latent, write_report

    trainer, _, _ = trained
    c = trainer.config
    res = evaluate_latent(trainer.host_model(), c, split="train", max_clips=4, frame_stride=6)
    assert res["clips"] == 4 and 0 < res["self"]["psnr"] < 60
    assert 0 <= res["cross"]["lpips_alex_vs_render"] <= 2
    assert set(res["motion_latents"]) == {f"latent_r_{f}" for f in PROBED_FIELDS}
    assert 0 <= res["warp"]["rigid_round_trip_rel_error"] <= 2
    js, png = write_report(res, str(tmp_path))
    assert os.path.getsize(png) > 1000 and os.path.getsize(js) > 100
    with pytest.raises(ValueError, match="two identities"):
        evaluate_latent(trainer.host_model(), c, split="test", max_clips=2)
