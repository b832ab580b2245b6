"""Stage-1 guidance, the oracle rung and the sharp 2-D path (vasa_jax.latent.guidance, model
switches ``motion_source`` / ``expression_readout`` / ``skip_channels``), and the ladder report."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.latent import get_config
from data_pipeline.synthtalk import render
from data_pipeline.synthtalk.motion import FIELD, MOTION_DIM
from vasa_jax.latent import guidance, warp
from vasa_jax.latent.generator import G2D
from vasa_jax.latent.model import FaceLatentModel, _coords_at
from vasa_jax.latent.objective import generator_loss_terms, needs_labels
from vasa_jax.train.latent_task import LatentTask


def _motion(n, seed=0):
    r = np.random.RandomState(seed)
    m = np.zeros((n, MOTION_DIM), np.float32)
    m[:, FIELD["yaw"]] = r.uniform(-0.15, 0.15, n)
    m[:, FIELD["pitch"]] = r.uniform(-0.1, 0.1, n)
    m[:, FIELD["roll"]] = r.uniform(-0.1, 0.1, n)
    m[:, FIELD["tx"]] = r.uniform(-0.1, 0.1, n)
    m[:, FIELD["ty"]] = r.uniform(-0.1, 0.1, n)
    m[:, FIELD["scale"]] = r.uniform(0.8, 1.2, n)
    m[:, FIELD["jaw_open"]] = r.uniform(0, 0.9, n)
    return m


def test_pose_labels_move_the_mouth_where_the_renderer_draws_it():
    """A canonical point at the mouth's head position, posed by ``warp``'s rigid transform with
    the labels, lands on the pixel the SynthTalk renderer draws the mouth at (same convention:
    a pose label means what the renderer meant)."""
    m = _motion(64)
    m[:, FIELD["jaw_open"]] = 0.0
    pose = guidance.pose_labels(jnp.asarray(m))
    rot, t, s = warp._pose_parts(pose)
    head = np.array(render._MOUTH) * render.HEAD_UNIT  # image units at scale 1
    posed = s[:, None] * jnp.einsum("bij,j->bi", rot, jnp.asarray(head)) + t
    px = (np.asarray(posed[:, :2]) + 1.0) * 0.5 * 64 - 0.5
    truth = render.mouth_centre_pixels(m, 64)
    # The renderer's 2.5-D projection differs from a rotation by second-order terms only.
    assert np.abs(px - truth).max() < 0.35, np.abs(px - truth).max()


def test_pose_guide_ignores_tz_and_expression_labels_are_scaled():
    labels = guidance.pose_labels(jnp.asarray(_motion(4)))
    z = labels.at[:, 5].add(3.0)  # tz has no label
    assert float(guidance.pose_guide_loss(z, labels)) == 0.0
    expected = np.mean([(0.1 / sc) ** 2 for sc, w in zip(guidance.POSE_SCALE,
                                                         guidance.LABELLED_POSE) if w])
    assert float(guidance.pose_guide_loss(labels + 0.1, labels)) == pytest.approx(expected,
                                                                                  rel=1e-5)
    e = guidance.expression_labels(jnp.asarray(_motion(4)))
    assert e.shape == (4, len(guidance.EXPRESSION_FIELDS))
    np.testing.assert_allclose(e[:, 0], _motion(4)[:, FIELD["jaw_open"]] / 0.25, rtol=1e-6)


def test_mouth_region_covers_the_mouth_and_follows_a_mirror():
    m = _motion(3)
    w = guidance.region_weight(m, 64)
    assert w.shape == (3, 64, 64, 1) and set(np.unique(w)) == {0.0, 1.0}
    c = np.round(render.mouth_centre_pixels(m, 64)).astype(int)
    for i in range(3):
        assert w[i, c[i, 1], c[i, 0], 0] == 1.0
        assert 120 <= w[i].sum() <= 200  # ~15 x 11 px at 64 px
    mirrored = m.copy()
    for f in ("yaw", "roll", "tx"):
        mirrored[:, FIELD[f]] *= -1
    np.testing.assert_array_equal(guidance.region_weight(mirrored, 64), w[:, :, ::-1])
    err = jnp.ones((3, 64, 64, 3))
    assert float(guidance.region_l1(err, 0 * err, w)) == pytest.approx(1.0)


def _model(**model):
    c = get_config("test")
    for k, v in model.items():
        c.model[k] = v
    return c, FaceLatentModel(c.model, rngs=nnx.Rngs(0))


def test_oracle_rung_takes_motion_from_labels_only():
    c, m = _model(motion_source="oracle")
    img = jnp.zeros((2, 64, 64, 3))
    labels = jnp.asarray(_motion(2))
    pose, dyn = m.motion_of(img, labels)
    np.testing.assert_allclose(pose, guidance.pose_labels(labels))
    assert dyn.shape == (2, c.model.dyn_dim)
    with pytest.raises(ValueError, match="oracle rung"):
        m.encode_motion(img)
    with pytest.raises(ValueError, match="labels"):
        m.motion_of(img)
    with pytest.raises(ValueError, match="motion_source"):
        _model(motion_source="landmarks")


def test_sharp_path_is_exact_at_rest_and_moves_with_the_pose():
    """Untrained warp generators give zero flow; at the identity pose the canonical 2-D
    features equal the source's, and the driver's sharp features equal the canonical ones. A
    translation moves them by whole pixels."""
    c, m = _model(skip_channels=4)
    img = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3), minval=-1)
    zero = jnp.zeros((2, warp.POSE_DIM))
    dyn = jnp.zeros((2, c.model.dyn_dim))
    (v_can, s_can), zid = m.encode_appearance(img, zero, dyn)
    _, _, first = m.appearance.encode(img)
    np.testing.assert_allclose(s_can, m.skip_proj(first), atol=1e-5)
    driven, coords = m._drive(v_can, zid, zero, dyn)
    uv = _coords_at(m._surface_displacement(driven, coords), s_can.shape[1:3])
    np.testing.assert_allclose(uv, jnp.broadcast_to(warp.identity_grid(1, 32, 32)[0, ..., :2],
                                                    uv.shape), atol=1e-6)
    # tx = 4 / 31 of the normalised width (align_corners): 2 feature pixels at 32 px.
    shift = zero.at[:, 3].set(4.0 / 31.0)
    driven, coords = m._drive(v_can, zid, shift, dyn)
    uv = _coords_at(m._surface_displacement(driven, coords), s_can.shape[1:3])
    moved = warp.resample(s_can, uv)
    np.testing.assert_allclose(moved[:, :, 2:], s_can[:, :, :-2], atol=1e-4)
    out = m.decode((v_can, s_can), zid, shift, dyn)
    assert out.shape == img.shape and bool(jnp.isfinite(out).all())


def test_pixel_path_carries_source_pixels_and_blends_with_the_mask():
    """With the pixel path, an untrained decoder at rest shows the source pixels through the
    occlusion mask (m = G2D.MASK_INIT everywhere) and a translation moves them by whole
    pixels; a pixel_warp model without the sharp path is a config error."""
    c, m = _model(skip_channels=4, pixel_warp=True)
    img = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3), minval=-1)
    zero = jnp.zeros((2, warp.POSE_DIM))
    dyn = jnp.zeros((2, c.model.dyn_dim))
    app, zid = m.encode_appearance(img, zero, dyn)
    assert len(app) == 4 and app[2].shape == img.shape and app[3].shape == (2, 64, 64, 2)
    np.testing.assert_allclose(app[3], 0.0, atol=1e-6)
    # Blending: out = k img + (1 - k) rgb with k = MASK_INIT, rgb the G2D colour head.
    out = m.decode(app, zid, zero, dyn)
    k = G2D.MASK_INIT
    # tx = 8 / 63 of the normalised width: 4 pixels at 64 px; the carried source moves with it.
    shift = zero.at[:, 3].set(8.0 / 63.0)
    driven, coords = m._drive(app[0], zid, shift, dyn)
    uv = _coords_at(m._surface_displacement(driven, coords), (64, 64))
    moved = warp.resample(img, uv + warp.resample(app[3], uv))
    np.testing.assert_allclose(moved[:, :, 4:], img[:, :, :-4], atol=1e-4)
    shifted = m.decode(app, zid, shift, dyn)
    assert shifted.shape == img.shape and bool(jnp.isfinite(shifted).all())
    m.g2d.to_mask = None  # the same G2D without the mask: its colour head alone
    rgb = m.decode(app, zid, zero, dyn)
    np.testing.assert_allclose(out, k * img + (1 - k) * rgb, atol=5e-5)
    with pytest.raises(ValueError, match="skip_channels"):
        _model(pixel_warp=True)


def test_generator_loss_with_guidance_terms_and_their_gradients():
    c, m = _model(skip_channels=4, expression_readout=16)
    lc = c.loss
    lc.pose_guide, lc.expression_guide, lc.mouth_l1 = 1.0, 1.0, 5.0
    frames = jnp.asarray(np.random.RandomState(0).randint(0, 255, (3, 2, 64, 64, 3)), jnp.uint8)
    motion = jnp.asarray(_motion(6).reshape(3, 2, MOTION_DIM))
    mouth = jnp.asarray(guidance.region_weight(np.asarray(motion).reshape(6, -1), 64)
                        ).reshape(3, 2, 64, 64, 1)
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    def loss(p):
        return generator_loss_terms(nnx.merge(graphdef, p, rest), frames, lc, motion=motion,
                                    mouth=mouth)[:2]

    (total, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert {"pose_guide", "expression_guide", "mouth_l1"} <= set(metrics)
    assert all(bool(jnp.isfinite(v)) for v in metrics.values())
    g = nnx.State(grads)
    # The guides reach the motion encoder and the readout; the sharp path gets gradients.
    assert float(jnp.abs(g["motion"]["pose"]["kernel"][...]).sum()) > 0
    assert float(jnp.abs(g["expression_readout"]["out"]["kernel"][...]).sum()) > 0
    assert float(jnp.abs(g["skip_proj"]["kernel"][...]).sum()) > 0
    _, bare = _model()
    with pytest.raises(ValueError, match="expression_readout"):
        jax.eval_shape(lambda: generator_loss_terms(bare, frames, lc, motion=motion,
                                                    mouth=mouth))


def test_guidance_on_a_dataset_without_labels_is_a_clear_error():
    c = get_config("test")
    c.loss.pose_guide = 1.0
    assert needs_labels(c) and not needs_labels(get_config("test"))
    task = LatentTask(c)
    batch = {"frames": np.zeros((2, 2, 64, 64, 3), np.uint8)}
    with pytest.raises(ValueError, match="motion labels"):
        task.device_batch(batch)
    c.loss.mouth_l1 = 1.0
    out = LatentTask(c).device_batch(dict(batch, motion=_motion(4).reshape(2, 2, -1)))
    assert out["motion"].shape == (2, 2, 12) and out["mouth"].shape == (2, 2, 64, 64, 1)


def test_real_video_labels_with_gaps_guide_only_where_measured():
    """Face-mesh labels (voxceleb2) are NaN where no face was found and in lip_round: the guides
    skip those entries (finite loss and gradients, equal to the loss over the measured ones),
    the mouth box comes from the stored mouth centre, and the oracle rung refuses them."""
    labels = jnp.asarray(_motion(4))
    z = guidance.pose_labels(labels) + 0.1
    gappy = labels.at[1].set(jnp.nan)  # frame 1: no face
    full = guidance.pose_guide_loss(z, guidance.pose_labels(labels))
    assert float(guidance.pose_guide_loss(z, guidance.pose_labels(gappy))) == pytest.approx(
        float(full), rel=1e-5)
    grad = jax.grad(lambda q: guidance.pose_guide_loss(q, guidance.pose_labels(gappy)))(z)
    assert bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad[1]).sum()) == 0.0
    assert float(guidance.masked_mse(jnp.ones((2, 3)), jnp.full((2, 3), jnp.nan))) == 0.0

    c, m = _model(expression_readout=16)
    lc = c.loss
    lc.pose_guide, lc.expression_guide, lc.mouth_l1 = 1.0, 1.0, 5.0
    frames = jnp.asarray(np.random.RandomState(0).randint(0, 255, (3, 2, 64, 64, 3)), jnp.uint8)
    motion = _motion(6).reshape(3, 2, MOTION_DIM)
    motion[:, :, FIELD["lip_round"]] = np.nan
    motion[0, 1] = np.nan
    centre = np.tile(np.array([0.1, 0.45], np.float32), (3, 2, 1))  # half-widths
    centre[0, 1] = np.nan
    task = LatentTask(c)
    batch = task.device_batch({"frames": np.asarray(frames), "motion": motion,
                               "mouth_centre": centre})
    box = batch["mouth"]
    assert box[0, 1].sum() == 0  # no face, no box
    col, row = (0.1 + 1) * 32 - 0.5, (0.45 + 1) * 32 - 0.5
    assert box[1, 0, int(round(row)), int(round(col)), 0] == 1.0
    assert 120 <= box[1, 0].sum() <= 200
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)

    def loss(p):
        return generator_loss_terms(nnx.merge(graphdef, p, rest), frames, lc,
                                    motion=jnp.asarray(batch["motion"]),
                                    mouth=jnp.asarray(box))[:2]

    (total, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert bool(jnp.isfinite(total)) and all(bool(jnp.isfinite(v)) for v in metrics.values())
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(metrics["pose_guide"]) > 0 and float(metrics["expression_guide"]) > 0
    c.model.motion_source = "oracle"
    with pytest.raises(ValueError, match="oracle rung"):
        LatentTask(c).device_batch({"frames": np.asarray(frames), "motion": motion})


def test_ladder_table_reads_reports(tmp_path):
    from vasa_jax.eval.latent_ladder import markdown, read_report, write_ladder

    reports = {}
    for name, jaw in (("oracle", 0.9), ("guided", 0.5)):
        d = tmp_path / name
        d.mkdir()
        rep = {"workdir": str(d), "checkpoint_step": 100,
               "self": {"psnr": 30.0, "lpips_alex": 0.1},
               "cross": {"psnr_vs_render": 25.0, "lpips_alex_vs_render": 0.2,
                         "probe_r_jaw_open": jaw, "probe_r_yaw": float("nan")},
               "motion_latents": {"latent_r_jaw_open": 0.7}}
        (d / "latent_eval.json").write_text(json.dumps(rep))
        reports[name] = read_report(str(d))
    js, md = write_ladder(reports, str(tmp_path / "ladder"))
    text = open(md).read()
    assert "| oracle | 100 |" in text and "0.900" in text and "0.500" in text
    assert json.load(open(js))["rows"][1]["cross r jaw_open"] == 0.5
    assert markdown([]) .count("\n") == 2
    with pytest.raises(FileNotFoundError, match="eval latent"):
        read_report(str(tmp_path / "missing"))
    assert os.path.exists(js)


@pytest.mark.parametrize("pixel_warp", [False, True])
def test_generation_decodes_with_the_sharp_path(pixel_warp):
    """The pipeline's window decoder broadcasts the appearance of one photo: (V_app, S_can),
    or with the pixel path the 4-tuple that also holds the photo's pixels."""
    from vasa_jax.pipeline import _decode

    c, m = _model(skip_channels=4, g2d_dyn_cond=True, pixel_warp=pixel_warp)
    img = jax.random.uniform(jax.random.PRNGKey(0), (1, 64, 64, 3), minval=-1)
    app, zid = m.encode_appearance(img, jnp.zeros((1, warp.POSE_DIM)),
                                   jnp.zeros((1, c.model.dyn_dim)))
    motion = jnp.zeros((5, warp.POSE_DIM + c.model.dyn_dim))
    for batch in (0, 2):
        out = jax.jit(lambda a, z, mo: _decode(m, a, z, mo, batch))(app, zid, motion)
        assert out.shape == (5, 64, 64, 3) and bool(jnp.isfinite(out).all())


def test_eval_ladder_command(tmp_path, capsys):
    from vasa_jax import cli

    d = tmp_path / "oracle"
    d.mkdir()
    (d / "latent_eval.json").write_text(json.dumps(
        {"checkpoint_step": 7, "self": {"psnr": 30.0}, "cross": {"probe_r_yaw": 0.8}}))
    out = tmp_path / "ladder"
    assert cli.main(["eval", "ladder", "--rung", f"oracle={d}", "--out", str(out)]) == 0
    assert "| oracle | 7 |" in (out / "ladder.md").read_text()
    assert cli.main(["eval", "ladder", "--rung", str(d), "--out", str(out)]) == 2
    assert "NAME=DIR" in capsys.readouterr().err
    assert cli.main(["eval", "ladder", "--rung", f"x={tmp_path / 'none'}", "--out",
                     str(out)]) == 2
    assert "eval latent" in capsys.readouterr().err


def test_estimator_source_reads_motion_with_a_frozen_trained_probe(probe_run, synthtalk_tiny,
                                                                   tmp_path):
    """``motion_source="estimator"``: the task installs a trained probe's weights, the motion
    comes from its reading of the frames (no labels needed), and training leaves the estimator
    untouched while the decoder learns. Without a workdir the error names the fix."""
    from trainer_configs import make_test_config

    from vasa_jax.instruments.load import restore_probe
    from vasa_jax.train.trainer import Trainer

    probe_dir, probe_cfg, _ = probe_run
    over = {"model.motion_source": "estimator", "model.skip_channels": 4,
            "model.pixel_warp": True, "model.estimator_workdir": probe_dir,
            "train.steps": 3, "train.checkpoint_every": 3, "train.eval_every": 0,
            "train.image_every": 0, "num_devices": 1}
    c = make_test_config(get_config, synthtalk_tiny, **over)
    c.model.estimator = probe_cfg.model
    assert not needs_labels(c)
    trainer = Trainer(LatentTask(c), c, str(tmp_path / "run"))
    probe = restore_probe(probe_dir)
    probe_model = nnx.merge(probe.graphdef, probe.state)
    before = trainer.model(ema=False)
    flat = lambda m: jax.tree.leaves(nnx.state(m))  # noqa: E731
    for a, b in zip(flat(before.estimator), flat(probe_model)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    frames = jax.random.uniform(jax.random.PRNGKey(2), (2, 64, 64, 3), minval=-1)
    pose, dyn = before.encode_motion(frames)
    np.testing.assert_allclose(pose, guidance.pose_labels(probe_model.predict_motion(frames)[0]),
                               atol=1e-5)
    assert dyn.shape == (2, c.model.dyn_dim)
    gen_before = np.asarray(before.g2d.to_rgb.kernel[...]).copy()
    trainer.fit()
    after = trainer.model(ema=False)
    for a, b in zip(flat(after.estimator), flat(probe_model)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(after.g2d.to_rgb.kernel[...]), gen_before)
    c.model.estimator_workdir = ""
    with pytest.raises(ValueError, match="vasa-jax train probe"):
        LatentTask(c).prepare()
