"""``launch/compare_convergence.py`` and its library pieces: the curve math and log readers
(``vasa_jax.eval.convergence``), the torch twin of our optimiser
(``baselines/torch_baseline/optim.py``), and end-to-end runs of the script on the motion and
latent ``test`` configs over SynthTalk ``res64_tiny``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # launch/ and baselines/ are not installed packages
    sys.path.insert(0, REPO)

from vasa_jax.eval import convergence as cv  # noqa: E402

SCRIPT = os.path.join(REPO, "launch", "compare_convergence.py")


# -- curve math --------------------------------------------------------------------------------

def test_make_curve_sorts_dedups_and_drops_nonfinite():
    c = cv.make_curve([3, 1, 2, 2, 4], [30.0, 10.0, 20.0, 21.0, float("nan")], "x")
    np.testing.assert_array_equal(c.steps, [1, 2, 3])
    np.testing.assert_array_equal(c.values, [10.0, 21.0, 30.0])  # the later value of step 2
    with pytest.raises(cv.LogError, match="no finite"):
        cv.make_curve([1], [float("inf")], "y")


def test_smooth_is_tensorboard_ema_and_handles_uneven_steps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    beta = 0.9
    got = cv.smooth(cv.make_curve(np.arange(50), x), beta)
    last, want = 0.0, []  # TensorBoard: zero-initialised EMA, debiased
    for i, v in enumerate(x):
        last = beta * last + (1 - beta) * v
        want.append(last / (1 - beta ** (i + 1)))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == x[0]
    np.testing.assert_array_equal(cv.smooth(cv.make_curve(np.arange(5), x[:5]), 0.0), x[:5])
    # Uneven gaps: a point 2 steps after the first has d = beta ** 2.
    s = cv.smooth(cv.make_curve([0, 2], [1.0, 0.0]), 0.5)
    np.testing.assert_allclose(s, [1.0, 0.5 * 0.25 / (0.5 * 0.25 + 0.75)])
    # A constant stays constant; a curve logged every 5 steps smooths like the dense one.
    np.testing.assert_allclose(cv.smooth(cv.make_curve([0, 3, 4, 10], [2.0] * 4), 0.9), 2.0)
    dense = cv.make_curve(np.arange(0, 400), np.exp(-np.arange(0, 400) / 100))
    sparse = cv.make_curve(np.arange(0, 400, 5), np.exp(-np.arange(0, 400, 5) / 100))
    np.testing.assert_allclose(cv.smooth(sparse, 0.9)[20:], cv.smooth(dense, 0.9)[::5][20:],
                               rtol=0.03)
    with pytest.raises(ValueError, match="beta"):
        cv.smooth(dense, 1.0)


def test_steps_to_level():
    steps = np.array([10, 20, 30, 40, 50])
    values = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert cv.steps_to_level(steps, values, 2.5) == 40
    assert cv.steps_to_level(steps, values, 3.0) == 30  # reaching the level counts
    assert cv.steps_to_level(steps, values, 9.0) == 10
    assert cv.steps_to_level(steps, values, 0.5) is None


def test_align_and_divergence():
    sa = np.arange(0, 11)
    sb = np.arange(-2, 13, 2)  # logged every 2 steps, linear: interpolation is exact
    s, a, b = cv.align(sa, 2.0 + sa, sb, 2.0 + sb)
    np.testing.assert_array_equal(s, sa)
    np.testing.assert_allclose(b, a)
    s, a, b = cv.align(np.arange(20), np.ones(20), np.array([5, 9]), np.ones(2))
    np.testing.assert_array_equal(s, np.arange(5, 10))  # only inside the other's range

    steps = np.arange(100)
    b = np.full(100, 2.0)
    rel = np.zeros(100)
    rel[3] = 0.5  # inside the burn-in: ignored
    rel[40] = -0.04
    rel[70] = 0.03
    d = cv.divergence(steps, b * (1 + rel), b, burn_in=10)
    assert d["max_abs"] == pytest.approx(0.04) and d["at_step"] == 40
    assert d["signed"] == pytest.approx(-0.04) and d["compared_points"] == 90
    assert d["mean_abs"] == pytest.approx(0.07 / 90)
    assert cv.divergence(steps, b * (1 + rel), b)["max_abs"] == pytest.approx(0.5)
    assert math.isnan(cv.divergence(steps[:5], b[:5], b[:5], burn_in=10)["max_abs"])


def test_compare_known_answers():
    steps = np.arange(1, 301)
    ours = cv.make_curve(steps, np.exp(-steps / 100), "jax")
    ref = cv.make_curve(steps, 1.02 * np.exp(-steps / 100), "torch")
    out = cv.compare(ours, ref, beta=0.0, burn_in=5, levels=(0.5, 0.25, 0.01), tolerance=0.05)
    assert out["initial_loss"] == pytest.approx(math.exp(-0.01))
    assert out["final_ratio"] == pytest.approx(1 / 1.02)
    assert out["divergence"]["max_abs"] == pytest.approx(0.02 / 1.02)
    assert out["within_tolerance"]
    lv = out["steps_to_level"]
    # exp(-s/100) <= f * exp(-1/100)  <=>  s >= 1 - 100 ln f
    assert lv[0]["jax"] == math.ceil(1 - 100 * math.log(0.5))
    assert lv[1]["jax"] == math.ceil(1 - 100 * math.log(0.25))
    assert lv[0]["torch"] == math.ceil(1 - 100 * math.log(0.5 / 1.02))
    assert lv[2]["jax"] is None and lv[2]["torch"] is None
    assert not cv.compare(ours, ref, beta=0.0, tolerance=0.01)["within_tolerance"]
    absolute = cv.compare(ours, ref, beta=0.0, levels=(0.5,), relative_levels=False)
    assert absolute["steps_to_level"][0]["jax"] == math.ceil(100 * math.log(2))
    # Smoothing with a lag: equal relative offsets stay equal after the EMA (it is linear).
    sm = cv.compare(ours, ref, beta=0.9, burn_in=0)
    assert sm["divergence"]["max_abs"] == pytest.approx(0.02 / 1.02)
    with pytest.raises(cv.LogError, match="do not overlap"):
        cv.compare(ours, cv.make_curve([1000, 1001], [1.0, 1.0], "far"))


# -- log readers -------------------------------------------------------------------------------

def test_csv_round_trip_and_formats(tmp_path):
    c = cv.make_curve([1, 2, 5], [0.5, 0.25, 0.125], "x")
    path = str(tmp_path / "run.csv")
    cv.write_csv(path, c)
    back = cv.read_log(path, "loss")
    np.testing.assert_array_equal(back.steps, c.steps)
    np.testing.assert_array_equal(back.values, c.values)
    # TensorBoard's CSV export, a custom column, case and spaces, empty cells.
    (tmp_path / "tb.csv").write_text("Wall time,Step,Value\n1.0,10,0.9\n2.0,20,\n3.0,30,0.7\n")
    tb = cv.read_log(str(tmp_path / "tb.csv"), "loss")
    np.testing.assert_array_equal(tb.steps, [10, 30])
    (tmp_path / "c.csv").write_text(" Iter , train/loss ,acc\n0,1.5,0\n1,1.25,0\n")
    cc = cv.read_csv(str(tmp_path / "c.csv"), "Train/Loss", step_column="iter")
    np.testing.assert_array_equal(cc.values, [1.5, 1.25])


def test_bad_logs(tmp_path):
    with pytest.raises(cv.LogError, match="No CSV file"):
        cv.read_log(str(tmp_path / "missing.csv"))
    with pytest.raises(cv.LogError, match="No log file or directory"):
        cv.read_log(str(tmp_path / "missing_dir"))
    (tmp_path / "nocol.csv").write_text("step,acc\n1,0.5\n")
    with pytest.raises(cv.LogError, match=r"no column 'loss'.*\['step', 'acc'\]"):
        cv.read_log(str(tmp_path / "nocol.csv"), "loss")
    (tmp_path / "text.csv").write_text("step,loss\n1,abc\n")
    with pytest.raises(cv.LogError, match="line 2.*not numbers"):
        cv.read_log(str(tmp_path / "text.csv"))
    (tmp_path / "empty.csv").write_text("step,loss\n")
    with pytest.raises(cv.LogError, match="no rows"):
        cv.read_log(str(tmp_path / "empty.csv"))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81" * 50)
    with pytest.raises(cv.LogError):
        cv.read_log(str(tmp_path / "bin.csv"))
    os.makedirs(tmp_path / "nolog")
    with pytest.raises(cv.LogError, match="No TensorBoard event files"):
        cv.read_log(str(tmp_path / "nolog"))
    garbage = tmp_path / "g" / "events.out.tfevents.123.host"
    os.makedirs(garbage.parent)
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(cv.LogError):  # unreadable, or readable with no scalar 'loss'
        cv.read_log(str(garbage.parent), "loss")


def test_tensorboard_round_trip_clu_and_torch(tmp_path):
    from clu import metric_writers

    w = metric_writers.SummaryWriter(str(tmp_path / "clu"))  # TF2 tensor summaries
    for s in range(1, 6):
        w.write_scalars(s, {"loss": 1.0 / s, "lr": 0.1 * s})
    w.close()
    c = cv.read_log(str(tmp_path / "clu"), "loss")
    np.testing.assert_array_equal(c.steps, np.arange(1, 6))
    np.testing.assert_allclose(c.values, 1.0 / np.arange(1, 6), rtol=1e-6)
    assert cv.scalar_tags(str(tmp_path / "clu")) == ["loss", "lr"]
    with pytest.raises(cv.LogError, match=r"No scalar 'train/loss'.*\['loss', 'lr'\]"):
        cv.read_log(str(tmp_path / "clu"), "train/loss")

    tb = pytest.importorskip("torch.utils.tensorboard")
    tw = tb.SummaryWriter(str(tmp_path / "runs" / "torch"))  # simple_value summaries
    for s in range(0, 30, 10):
        tw.add_scalar("train/loss", 2.0 - 0.01 * s, s)
    tw.close()
    files = cv.event_files(str(tmp_path / "runs"))  # the one run below the directory
    assert len(files) == 1
    c = cv.read_log(files[0], "train/loss")  # a single event file
    np.testing.assert_array_equal(c.steps, [0, 10, 20])
    np.testing.assert_allclose(c.values, [2.0, 1.9, 1.8], rtol=1e-6)
    os.makedirs(tmp_path / "runs" / "other")
    os.replace(str(tmp_path / "clu" / os.listdir(tmp_path / "clu")[0]),
               str(tmp_path / "runs" / "other" / "events.out.tfevents.1.x"))
    with pytest.raises(cv.LogError, match="several TensorBoard runs"):
        cv.read_log(str(tmp_path / "runs"), "loss")


# -- the torch optimiser twin ------------------------------------------------------------------

def _optim_cfg(**kw):
    import ml_collections

    c = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=3, decay_steps=10,
                                       end_lr_factor=0.1, b1=0.8, b2=0.95, eps=1e-6,
                                       weight_decay=0.3, clip_norm=1.0))
    c.update(kw)
    return c


def test_lr_schedule_matches_optax():
    from baselines.torch_baseline.optim import warmup_cosine_lr
    from vasa_jax.train.state import lr_schedule

    total = 12  # the run's length: the decay's when decay_steps is 0
    for cfg in (_optim_cfg(), _optim_cfg(warmup_steps=0, decay_steps=7),
                _optim_cfg(warmup_steps=20, decay_steps=20, end_lr_factor=0.0),
                _optim_cfg(decay_steps=0)):
        ours = lr_schedule(cfg, total)
        for step in range(15):
            assert warmup_cosine_lr(step, cfg, total) == pytest.approx(
                float(ours(step)), rel=1e-6, abs=1e-12), (cfg, step)


def test_torch_optimizer_matches_optax_chain():
    """Our optax chain and the torch twin from the same parameters and gradients: clipping on
    some steps, weight decay on the matrices only, warmup and cosine past decay_steps."""
    import jax
    import jax.numpy as jnp
    import optax
    import torch

    from baselines.torch_baseline.optim import AdamWLikeOptax
    from vasa_jax.train.state import make_optimizer

    cfg = _optim_cfg()
    rng = np.random.default_rng(0)
    init = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,)),
            "t": rng.normal(size=(2, 3, 2))}
    init = {k: v.astype(np.float32) for k, v in init.items()}
    params = {k: jnp.asarray(v) for k, v in init.items()}
    opt = make_optimizer(cfg, 100)  # decays over cfg.decay_steps (10), not the run's 100
    state = opt.init(params)
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
    topt = AdamWLikeOptax(tparams.items(), cfg, 100)
    assert topt.decay_names == {"w", "t"}
    for step in range(13):
        scale = 3.0 if step % 2 else 0.05  # clipped / not clipped
        grads = {k: (scale * rng.normal(size=v.shape)).astype(np.float32)
                 for k, v in init.items()}
        updates, state = opt.update({k: jnp.asarray(g) for k, g in grads.items()}, state, params)
        params = optax.apply_updates(params, updates)
        for k, p in tparams.items():
            p.grad = torch.from_numpy(grads[k].copy())
        info = topt.step()
        norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
        assert info["grad_norm"] == pytest.approx(norm, rel=1e-6)
        for k in init:
            np.testing.assert_allclose(tparams[k].detach().numpy(), np.asarray(params[k]),
                                       rtol=2e-6, atol=2e-7, err_msg=f"{k} at step {step}")
    assert jax.tree.leaves(params)  # the run moved the parameters
    assert not np.allclose(np.asarray(params["b"]), init["b"])


# -- the script, end to end --------------------------------------------------------------------

def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_convergence", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def script():
    return _load_script()


def _test_config(data_dir):
    from configs import motion as motion_configs

    c = motion_configs.get_config("test")
    c.data.data_dir = data_dir
    return c


@pytest.fixture(scope="module")
def compared(script, synthtalk_tiny, tmp_path_factory):
    """(out dir, summary) of a 25-step comparison on the motion test config."""
    out = str(tmp_path_factory.mktemp("compare"))
    summary = script.run(_test_config(synthtalk_tiny), out, steps=25, burn_in=3, log_every=0)
    return out, summary


def test_end_to_end(compared):
    out, summary = compared
    assert sorted(os.listdir(out)) == ["compare.json", "curves.png", "jax", "torch"]
    with open(os.path.join(out, "compare.json")) as f:
        data = json.load(f)
    assert data["stage"] == "motion" and data["steps"] == 25 and data["reference"] == "torch"
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    jax_log = cv.read_log(os.path.join(out, "jax"), "loss")
    torch_log = cv.read_log(os.path.join(out, "torch"), "loss")
    np.testing.assert_array_equal(jax_log.steps, np.arange(1, 26))
    np.testing.assert_allclose(jax_log.values, data["curves"]["jax"], rtol=1e-6)
    np.testing.assert_allclose(torch_log.values, data["curves"]["torch"], rtol=1e-6)
    assert {"grad_norm", "lr", "x0_mse", "step_seconds"} <= set(
        cv.scalar_tags(os.path.join(out, "jax")))

    j, t = np.asarray(data["curves"]["jax"]), np.asarray(data["curves"]["torch"])
    rel = np.abs(j - t) / t
    print("per-step relative differences", rel)
    assert rel[0] < 1e-5  # same weights, same batch, same draws
    assert rel.max() < 1e-3  # and they stay together
    assert j[-5:].mean() < 0.85 * j[:5].mean()  # it trains
    assert data["within_tolerance"] and data["divergence"]["max_abs"] < 1e-3
    assert data["final_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert data["wall_time"]["jax"]["total_seconds"] > 0
    assert data["seeds"]["config.seed"] == 0 and data["config"]["model"]["width"] == 32
    # torch decays exactly the parameters our optax mask decays
    names = data["stage_info"]["weight_decay_params_torch"]
    assert "blocks.0.attn.q.weight" in names and "null_audio" not in names
    assert not any(n.endswith(".bias") for n in names)


def test_external_csv_log(script, compared, synthtalk_tiny, tmp_path):
    """Our torch run's curve as someone else's CSV log: the comparison is the same."""
    out, summary = compared
    csv_path = str(tmp_path / "their_run.csv")
    cv.write_csv(csv_path, cv.read_log(os.path.join(out, "torch"), "loss"), column="train_loss")
    ext_out = str(tmp_path / "ext")
    os.makedirs(os.path.join(ext_out, "torch"))  # a stale torch/ from an earlier run goes away
    ext = script.run(_test_config(synthtalk_tiny), ext_out, steps=25, burn_in=3, log_every=0,
                     external_log=csv_path, external_tag="train_loss")
    assert sorted(os.listdir(ext_out)) == ["compare.json", "curves.png", "jax"]
    assert ext["reference"] == "external" and ext["external_log"]["tag"] == "train_loss"
    assert ext["divergence"]["max_abs"] == pytest.approx(summary["divergence"]["max_abs"],
                                                         abs=1e-6)
    assert ext["final_ratio"] == pytest.approx(summary["final_ratio"], abs=1e-6)
    assert "external" in ext["steps_to_level"][0]


def test_bad_inputs_fail_before_training(script, synthtalk_tiny, tmp_path):
    out = str(tmp_path / "out")
    cfg = _test_config(synthtalk_tiny)
    with pytest.raises(cv.LogError, match="No CSV file"):
        script.run(cfg, out, steps=20, external_log=str(tmp_path / "nope.csv"))
    (tmp_path / "acc.csv").write_text("step,acc\n1,0.5\n")
    with pytest.raises(cv.LogError, match="no column 'loss'"):
        script.run(cfg, out, steps=20, external_log=str(tmp_path / "acc.csv"))
    from data_pipeline.loader import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="vasa-jax data build synthtalk"):
        script.run(_test_config(str(tmp_path / "no_data")), out, steps=20)
    assert not os.path.exists(out)  # nothing written
    with pytest.raises(script.CompareError, match="must exceed --burn_in"):
        script.run(cfg, out, steps=10, burn_in=10)
    with pytest.raises(script.CompareError, match="no comparison adapter"):
        c = _test_config(synthtalk_tiny)
        c.task = "no_such_stage"
        script.run(c, out, steps=20)


def test_draws_match_the_trainer(script, synthtalk_tiny):
    """The per-step randomness fed to both frameworks is the trainer's own (MotionTask.loss
    with the trainer's step key gives the same loss)."""
    import jax
    from flax import nnx

    cfg = _test_config(synthtalk_tiny)
    cfg.train.stats_clips = 2
    stage = script.MotionStage(cfg)
    stage.prepare()
    stage.init_jax()
    batch = stage.next_batch()
    step = 3
    draws = stage.draws(step, batch)
    model = nnx.merge(stage.graphdef, stage.params, stage.rest)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step)  # Trainer._step's key
    want, _ = stage.task.loss(model, batch, key)
    from vasa_jax.motion.objective import denoising_loss

    t, noise, drops = stage._split_draws(draws)
    got, _ = denoising_loss(model, stage.task.schedule, batch, t, noise, drops,
                            cfg.diffusion.velocity_weight)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_cli_reports_a_bad_external_log(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, SCRIPT, "--variant=test", "--steps=20",
                        f"--out={tmp_path / 'o'}", f"--external_log={tmp_path / 'x.csv'}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "compare_convergence: error: No CSV file" in r.stderr
    assert not os.path.exists(tmp_path / "o")


# -- stage 1 -----------------------------------------------------------------------------------

LATENT_STEPS = 12


def test_latent_end_to_end(script, synthtalk_tiny, tmp_path):
    """Stage 1 on the latent ``test`` config (GAN terms on: both players, both optimisers)."""
    from configs import latent as latent_configs

    cfg = latent_configs.get_config("test")
    cfg.data.data_dir = synthtalk_tiny
    out = str(tmp_path / "latent")
    summary = script.run(cfg, out, steps=LATENT_STEPS, burn_in=2, log_every=0)
    assert sorted(os.listdir(out)) == ["compare.json", "curves.png", "jax", "torch"]
    with open(os.path.join(out, "compare.json")) as f:
        data = json.load(f)
    assert data["stage"] == "latent" and data["steps"] == LATENT_STEPS
    assert data["reference"] == "torch" and summary["stage"] == "latent"
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    tags = {s: set(cv.scalar_tags(os.path.join(out, s))) for s in ("jax", "torch")}
    want = {"loss", "d_loss", "d_real", "d_fake", "l1", "motion_l1", "perceptual", "g_adv",
            "feature_matching", "consist", "cross_id", "psnr", "grad_norm",
            "grad_norm/generator", "grad_norm/discriminator", "lr", "step_seconds"}
    assert want <= tags["jax"] and want <= tags["torch"], tags
    logs = {s: {t: cv.read_log(os.path.join(out, s), t).values
                for t in ("loss", "d_loss", "l1", "grad_norm")} for s in ("jax", "torch")}
    np.testing.assert_allclose(logs["jax"]["loss"], data["curves"]["jax"], rtol=1e-6)
    np.testing.assert_array_equal(cv.read_log(os.path.join(out, "jax"), "loss").steps,
                                  np.arange(1, LATENT_STEPS + 1))

    j, t = np.asarray(data["curves"]["jax"]), np.asarray(data["curves"]["torch"])
    rel = np.abs(j - t) / t
    print("generator loss", j, "relative differences", rel)
    # Same weights, same batch: the same losses (both players) and gradient norms at step 0.
    assert rel[0] < 1e-4
    for k in ("d_loss", "l1", "grad_norm"):
        a, b = logs["jax"][k], logs["torch"][k]
        assert abs(a[0] - b[0]) <= 1e-4 * abs(b[0]), (k, a[0], b[0])
    assert rel.max() < 1e-2  # and they stay together
    # It trains: the generator loss and its reconstruction L1 fall on both sides (observed:
    # the total from 7.7 to 3.8 in 12 steps).
    for s in ("jax", "torch"):
        g, l1 = logs[s]["loss"], logs[s]["l1"]
        assert g[-3:].mean() < 0.8 * g[:3].mean(), (s, g)
        assert l1[-3:].mean() < 0.95 * l1[:3].mean(), (s, l1)
    info = data["stage_info"]
    assert info["discriminator_trained"] and info["num_params"]["discriminator"] > 0
    dec = info["weight_decay_params_torch"]
    assert all(n.startswith("discriminator.") for n in dec["discriminator"])
    assert not any(n.startswith("discriminator.") for n in dec["generator"])
    assert not any(n.endswith(".bias") for n in dec["generator"] + dec["discriminator"])
