"""Parity of stage 2 (MotionDiT + its diffusion loss) with the PyTorch baseline
(``baselines/torch_baseline``), through the weight converters in ``vasa_jax.interop.motion_dit``.

Two tiers:
- fast (no torch import): our JAX model, loaded with the weights stored in
  ``tests/golden/motion_dit_parity.npz``, must reproduce the outputs, loss and gradients that the
  torch model computed from the same weights and inputs;
- live (``pytest.importorskip("torch")``): both frameworks run here, on the ``test`` config and
  the mid-size ``synthtalk`` config (4 x 160, W=50, K=10, velocity term on).

Regenerate the golden file (after an intended change of the model) with
  PYTHONPATH=tests python tests/parity/test_torch_parity.py
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import parity_checks as checks
import pytest
from flax import nnx

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # the baselines/ folder is not an installed package
    sys.path.insert(0, REPO)

from configs import motion as motion_configs  # noqa: E402
from vasa_jax.interop import files  # noqa: E402
from vasa_jax.interop import motion_dit as conv  # noqa: E402
from vasa_jax.motion import diffusion  # noqa: E402
from vasa_jax.motion.dit import make_motion_dit  # noqa: E402
from vasa_jax.motion.objective import denoising_loss, window_conditions  # noqa: E402

GOLDEN = os.path.join(REPO, "tests", "golden",
                      "motion_dit_parity.npz")
WEIGHTS_SEED = 1
FWD_TOL, LOSS_TOL, GRAD_TOL = 1e-5, 1e-5, 1e-4


# -- shared inputs -----------------------------------------------------------------------------

def make_inputs(model_cfg, diff_cfg, seed: int = 0, batch: int = 3) -> dict[str, np.ndarray]:
    """A batch in data units, explicit t/noise, and two drop patterns: ``drop/*`` (every
    condition dropped in some example, trailing audio frames dropped) and none."""
    r = np.random.default_rng(seed)
    b, w, k = batch, model_cfg.window, model_cfg.context
    m, a = model_cfg.motion_dim, model_cfg.audio_dim
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return {
        "motion": f32(r.normal(0.5, 1.3, (b, k + w, m))),
        "audio_features": f32(r.normal(-0.2, 0.8, (b, k + w, a))),
        "gaze": f32(r.uniform(-0.6, 0.6, (b, 2))),
        "distance": f32(r.uniform(-1, 1, (b,))),
        "emotion": np.array([0, 3, 1, 2][:b], np.int32),
        "t": np.array([0, diff_cfg.train_steps // 3, diff_cfg.train_steps - 1][:b], np.int32),
        "noise": f32(r.normal(size=(b, w, m))),
        "drop/audio": np.array([True, False, True][:b]),
        "drop/context": np.array([False, True, True][:b]),
        "drop/gaze": np.array([True, True, False][:b]),
        "drop/distance": np.array([False, True, False][:b]),
        "drop/emotion": np.array([True, False, True][:b]),
        "drop/audio_frames": np.arange(w)[None] < np.array([w, w - 3, w - 1][:b])[:, None],
    }


def split_inputs(inp, to):
    batch = {k: to(inp[k]) for k in ("motion", "audio_features", "gaze", "distance", "emotion")}
    drop = {k[5:]: to(v) for k, v in inp.items() if k.startswith("drop/")}
    return batch, to(inp["t"]), to(inp["noise"]), drop


# -- JAX side ----------------------------------------------------------------------------------

def jax_outputs(model, cfg, inp) -> dict[str, np.ndarray]:
    """Forward (conditions present / dropped), loss and torch-named gradients, jitted."""
    schedule = diffusion.make_schedule(cfg.diffusion.schedule, cfg.diffusion.train_steps)
    vw = cfg.diffusion.velocity_weight
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch, t, noise, drop = split_inputs(inp, jnp.asarray)

    @jax.jit
    def run(params, rest):
        def loss_fn(p):
            return denoising_loss(nnx.merge(graphdef, p, rest), schedule, batch, t, noise, drop,
                                  vw)[0]

        mdl = nnx.merge(graphdef, params, rest)
        x0, cond = window_conditions(mdl, batch)
        x_t = x0 + noise
        full = mdl(x_t, t, cond)
        dropped = mdl(x_t, t, cond, drop)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        return full, dropped, loss, grads

    full, dropped, loss, grads = run(params, rest)
    out = {"out_full": np.asarray(full), "out_dropped": np.asarray(dropped),
           "loss": np.asarray(loss)}
    out.update({"grad/" + k: v for k, v in conv.flax_to_torch(grads).items()})
    return out


def jax_model(cfg, weights: dict[str, np.ndarray]):
    return conv.torch_to_flax(weights, make_motion_dit(cfg.model, rngs=nnx.Rngs(0)))


# -- torch side --------------------------------------------------------------------------------

def torch_outputs(cfg, weights, inp) -> dict[str, np.ndarray]:
    import torch

    from baselines.torch_baseline import diffusion as tdiff
    from baselines.torch_baseline.motion_dit import make_motion_dit as make_torch

    model = make_torch(cfg.model)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    schedule = tdiff.make_schedule(cfg.diffusion.schedule, cfg.diffusion.train_steps)
    batch, t, noise, drop = split_inputs(inp, lambda a: torch.from_numpy(np.array(a)))
    k = model.context
    with torch.no_grad():
        motion = model.normalize_motion(batch["motion"])
        audio = model.normalize_audio(batch["audio_features"])
        cond = {"audio": audio[:, k:], "audio_pre": audio[:, :k], "motion_pre": motion[:, :k],
                "gaze": batch["gaze"], "distance": batch["distance"],
                "emotion": batch["emotion"]}
        x_t = motion[:, k:] + noise
        full = model(x_t, t, cond)
        dropped = model(x_t, t, cond, drop)
    loss, _ = tdiff.training_loss(model, schedule, batch, t, noise, drop,
                                  velocity_weight=cfg.diffusion.velocity_weight)
    loss.backward()
    out = {"out_full": full.numpy(), "out_dropped": dropped.numpy(),
           "loss": loss.detach().numpy()}
    out.update({"grad/" + n: p.grad.numpy() for n, p in model.named_parameters()})
    return out


# -- comparison --------------------------------------------------------------------------------

def max_errors(got: dict, want: dict) -> dict[str, float]:
    """Max abs error per group: out_full, out_dropped, loss, grad (over every parameter)."""
    grads_got = {k for k in got if k.startswith("grad/")}
    grads_want = {k for k in want if k.startswith("grad/")}
    assert grads_got == grads_want, (sorted(grads_got ^ grads_want))
    err = {k: float(np.abs(got[k] - want[k]).max()) for k in ("out_full", "out_dropped", "loss")}
    err["grad"] = max(float(np.abs(got[k] - want[k]).max()) for k in grads_got)
    return err


def assert_parity(err: dict[str, float]) -> None:
    assert err["out_full"] < FWD_TOL, err
    assert err["out_dropped"] < FWD_TOL, err
    assert err["loss"] < LOSS_TOL, err
    assert err["grad"] < GRAD_TOL, err


def random_weights(cfg, seed=WEIGHTS_SEED) -> dict[str, np.ndarray]:
    return conv.flax_to_torch(conv.randomize(make_motion_dit(cfg.model, rngs=nnx.Rngs(0)), seed))


# -- fast tier (no torch) ----------------------------------------------------------------------

def load_golden():
    with np.load(GOLDEN) as z:
        g = {k: z[k] for k in z.files}
    weights = {k[2:]: v for k, v in g.items() if k.startswith("w/")}
    inputs = {k[3:]: v for k, v in g.items() if k.startswith("in/")}
    expected = {k[4:]: v for k, v in g.items() if k.startswith("out/")}
    return str(g["variant"]), weights, inputs, expected


def test_golden_outputs_without_torch():
    variant, weights, inputs, expected = load_golden()
    cfg = motion_configs.get_config(variant)
    err = max_errors(jax_outputs(jax_model(cfg, weights), cfg, inputs), expected)
    print("golden max errors", err)
    assert_parity(err)
    # The drop masks matter: dropping conditions changes the output.
    assert np.abs(expected["out_full"] - expected["out_dropped"]).max() > 1e-2


def test_conversion_round_trip_and_errors(tmp_path):
    cfg = motion_configs.get_config("test")
    model = conv.randomize(make_motion_dit(cfg.model, rngs=nnx.Rngs(0)), 3)
    sd = conv.flax_to_torch(nnx.state(model))
    assert set(sd) == set(conv.torch_names(model))
    path = tmp_path / "w.safetensors"
    files.save_safetensors(path, sd)
    back = conv.torch_to_flax(files.load_safetensors(path),
                              make_motion_dit(cfg.model, rngs=nnx.Rngs(7)))
    checks.assert_same_variables(model, back)
    assert type(dict(nnx.to_flat_state(nnx.state(back)))[("motion_mean",)]).__name__ == "Stat"

    checks.assert_bad_state_dicts_named(
        conv, sd, lambda: make_motion_dit(cfg.model, rngs=nnx.Rngs(0)),
        drop="blocks.1.attn.q.weight", missing_match=r"missing.*blocks\.1\.attn\.q\.weight",
        reshaped={"out.weight": sd["out.weight"].T}, misshaped_match=r"mis-shaped.*out\.weight")


# -- live tier (torch) -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["test", "synthtalk"])
def test_live_parity_with_torch(variant):
    pytest.importorskip("torch")
    cfg = motion_configs.get_config(variant)
    weights = random_weights(cfg)
    inputs = make_inputs(cfg.model, cfg.diffusion, seed=0, batch=2 if variant != "test" else 3)
    want = torch_outputs(cfg, weights, inputs)
    got = jax_outputs(jax_model(cfg, weights), cfg, inputs)
    err = max_errors(got, want)
    print(variant, "max errors", err)
    assert_parity(err)
    if variant == "synthtalk":
        assert cfg.diffusion.velocity_weight > 0  # the velocity term is exercised


def test_torch_checkpoint_files(tmp_path):
    torch = pytest.importorskip("torch")
    from baselines.torch_baseline.motion_dit import make_motion_dit as make_torch

    cfg = motion_configs.get_config("test")
    tmodel = checks.random_torch_model(make_torch, cfg.model)
    m, a = cfg.model.motion_dim, cfg.model.audio_dim
    tmodel.set_stats(np.full(m, 0.5), np.full(m, 2.0), np.linspace(-1, 1, a), np.full(a, 3.0))
    path = tmp_path / "m.pt"
    torch.save(tmodel.state_dict(), path)
    model = conv.torch_to_flax(files.load_torch_checkpoint(path),
                               make_motion_dit(cfg.model, rngs=nnx.Rngs(0)))
    checks.assert_back_to_torch(conv, model, tmodel)


# -- golden file -------------------------------------------------------------------------------

def write_golden(variant: str = "test") -> None:
    """Compute the golden outputs with the torch model and store them (with the weights and
    inputs) in ``GOLDEN``."""
    cfg = motion_configs.get_config(variant)
    weights = random_weights(cfg)
    inputs = make_inputs(cfg.model, cfg.diffusion)
    expected = torch_outputs(cfg, weights, inputs)
    arrays = {"variant": np.array(variant), "weights_seed": np.array(WEIGHTS_SEED)}
    arrays.update({"w/" + k: v for k, v in weights.items()})
    arrays.update({"in/" + k: v for k, v in inputs.items()})
    arrays.update({"out/" + k: v for k, v in expected.items()})
    checks.save_golden(GOLDEN, arrays)


if __name__ == "__main__":
    write_golden()
