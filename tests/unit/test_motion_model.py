"""MotionDiT, diffusion, condition dropout, CFG, samplers and windowed generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.motion import get_config
from model_helpers import perturbed
from vasa_jax.motion import diffusion
from vasa_jax.motion.audio import make_frontend
from vasa_jax.motion.dit import CONDITIONS, make_motion_dit
from vasa_jax.motion.generate import generate_motion

B = 3


@pytest.fixture(scope="module")
def model():
    c = get_config("test")
    return make_motion_dit(c.model, rngs=nnx.Rngs(0))


def _cond(model, key, b=B):
    k = jax.random.split(key, 5)
    return {"audio": jax.random.normal(k[0], (b, model.window, model.audio_dim)),
            "audio_pre": jax.random.normal(k[1], (b, model.context, model.audio_dim)),
            "motion_pre": jax.random.normal(k[2], (b, model.context, model.motion_dim)),
            "gaze": jax.random.uniform(k[3], (b, 2), minval=-0.3, maxval=0.3),
            "distance": jax.random.uniform(k[4], (b,)), "emotion": jnp.arange(b) % 4}


def _jit(model):
    """model(x, t, cond, drop) as one compiled function (eager dispatch is slow)."""
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda st, x, t, c, d: nnx.merge(graphdef, st)(x, t, c, d))
    return lambda x, t, c, d=None: f(state, x, t, c, d or {})


def _jitted_perturbed(model):
    m = perturbed(model)
    return m, _jit(m)


def test_output_shape_and_dtype(model):
    x = jnp.ones((B, model.window, model.motion_dim))
    y = _jit(model)(x, jnp.array([0, 5, 99]), _cond(model, jax.random.PRNGKey(0)))
    assert y.shape == (B, model.window, model.motion_dim) and y.dtype == jnp.float32


def test_paper_config_size_without_allocation():
    c = get_config("paper")
    assert (c.model.depth, c.model.width, c.model.heads) == (8, 512, 8)
    assert (c.model.window, c.model.context) == (50, 10)
    abstract = nnx.eval_shape(lambda: make_motion_dit(c.model, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert 27e6 < n < 32e6  # VASA-1: ~29M


def test_bf16_path_is_finite():
    c = get_config("test")
    c.model.dtype = "bfloat16"
    m = perturbed(make_motion_dit(c.model, rngs=nnx.Rngs(0)))
    y = _jit(m)(jnp.ones((B, m.window, m.motion_dim)), jnp.array([1, 2, 3]), _cond(m, jax.random.PRNGKey(1)))
    assert y.shape == (B, m.window, m.motion_dim) and bool(jnp.all(jnp.isfinite(y)))


def test_each_condition_changes_the_output_and_dropping_masks_it(model):
    m, f = _jitted_perturbed(model)
    x = jax.random.normal(jax.random.PRNGKey(2), (B, m.window, m.motion_dim))
    t = jnp.array([10, 50, 90])
    cond = _cond(m, jax.random.PRNGKey(3))
    base = f(x, t, cond)
    other = _cond(m, jax.random.PRNGKey(4))
    for c in CONDITIONS:
        keys = {"audio": ("audio", "audio_pre"), "context": ("motion_pre", "audio_pre"),
                "gaze": ("gaze",), "distance": ("distance",), "emotion": ("emotion",)}[c]
        changed = dict(cond, **{k: other[k] for k in keys})
        if c == "emotion":
            changed["emotion"] = (cond["emotion"] + 1) % 4
        assert not np.allclose(f(x, t, changed), base, atol=1e-5), c
        # With the condition dropped, its value no longer matters (audio: window frames only;
        # the context audio belongs to the context condition).
        drop = {c: jnp.ones((B,), bool)}
        if c == "audio":
            changed = dict(cond, audio=other["audio"])
        np.testing.assert_allclose(f(x, t, changed, drop), f(x, t, cond, drop), atol=1e-5)


def test_dropped_audio_frames_only_affect_their_frames_input(model):
    m, f = _jitted_perturbed(model)
    x = jax.random.normal(jax.random.PRNGKey(2), (B, m.window, m.motion_dim))
    t = jnp.array([10, 50, 90])
    cond = _cond(m, jax.random.PRNGKey(3))
    keep = jnp.arange(m.window) < m.window - 3
    drop = {"audio_frames": jnp.broadcast_to(keep, (B, m.window))}
    tail_changed = dict(cond, audio=cond["audio"].at[:, -3:].add(5.0))
    np.testing.assert_allclose(f(x, t, tail_changed, drop), f(x, t, cond, drop), atol=1e-5)
    head_changed = dict(cond, audio=cond["audio"].at[:, :3].add(5.0))
    assert not np.allclose(f(x, t, head_changed, drop), f(x, t, cond, drop), atol=1e-5)


def test_cfg_formula_against_direct_computation(model):
    m, f = _jitted_perturbed(model)
    x = jax.random.normal(jax.random.PRNGKey(5), (B, m.window, m.motion_dim))
    t = jnp.array([3, 40, 77])
    cond = _cond(m, jax.random.PRNGKey(6))
    none = {c: jnp.zeros((B,), bool) for c in CONDITIONS}
    scales = {"audio": 0.5, "gaze": 1.0, "emotion": 0.25}
    full = f(x, t, cond, none)
    expected = (1 + sum(scales.values())) * full
    for c, lam in scales.items():
        expected = expected - lam * f(x, t, cond, dict(none, **{c: jnp.ones((B,), bool)}))
    # One batched call of 4 x B rows (conditional + one per guided condition).
    got = jax.jit(diffusion.guided_denoiser(f, scales))(x, t, cond, none)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # No guidance is the plain conditional prediction.
    np.testing.assert_allclose(diffusion.guided_denoiser(f, {})(x, t, cond, none), full)


def test_measured_dropout_rates():
    w, n = 50, 20000
    drops = jax.vmap(lambda k: diffusion.sample_drops(k, w))(
        jax.random.split(jax.random.PRNGKey(0), n))
    for c in ("audio", "gaze", "distance", "emotion"):
        assert abs(float(drops[c].mean()) - 0.1) < 0.01, c
    assert abs(float(drops["context"].mean()) - 0.5) < 0.015
    tail = (~drops["audio_frames"]).sum(axis=1)
    assert abs(float((tail > 0).mean()) - 0.1) < 0.01
    assert int(tail.max()) == w // 5 and int(tail[tail > 0].min()) == 1
    # Trailing frames only: a dropped frame is never followed by a kept one.
    f = np.asarray(drops["audio_frames"])
    assert not np.any(~f[:, :-1] & f[:, 1:])
    # Conditions are drawn independently.
    both = float((drops["audio"] & drops["gaze"]).mean())
    assert abs(both - 0.01) < 0.004


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedules_and_forward_process(kind):
    s = diffusion.make_schedule(kind, 1000)
    ac = np.asarray(s.alphas_cumprod)
    assert ac[0] > 0.99 and ac[-1] < 0.01 and np.all(np.diff(ac) < 0)
    x0 = jnp.full((20000, 1), 2.0)
    t = jnp.full((20000,), 300)
    xt = diffusion.q_sample(s, x0, t, jax.random.normal(jax.random.PRNGKey(0), x0.shape))
    np.testing.assert_allclose(float(xt.mean()), 2 * np.sqrt(ac[300]), atol=0.03)
    np.testing.assert_allclose(float(xt.var()), 1 - ac[300], atol=0.03)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_samplers_any_steps_deterministic_and_exact_for_a_perfect_denoiser(kind, steps):
    s = diffusion.make_schedule("cosine", 1000)
    target = jnp.linspace(-1, 1, 24).reshape(2, 4, 3)
    perfect = lambda x, t: jnp.broadcast_to(target, x.shape)  # noqa: E731
    a = diffusion.sample(perfect, jax.random.PRNGKey(1), (2, 4, 3), s, steps, kind=kind)
    np.testing.assert_allclose(a, target, atol=1e-5)
    noisy = lambda x, t: 0.5 * x  # noqa: E731  a denoiser whose output depends on the path
    r1 = diffusion.sample(noisy, jax.random.PRNGKey(1), (2, 4, 3), s, steps, kind=kind)
    r2 = diffusion.sample(noisy, jax.random.PRNGKey(1), (2, 4, 3), s, steps, kind=kind)
    r3 = diffusion.sample(noisy, jax.random.PRNGKey(2), (2, 4, 3), s, steps, kind=kind)
    np.testing.assert_array_equal(r1, r2)
    assert not np.allclose(r1, r3)


def test_sampler_state_is_a_pure_pytree():
    s = diffusion.make_schedule("linear", 100)
    ts = jnp.asarray(diffusion.sampling_timesteps(100, 10))
    state = diffusion.init_sampler(jax.random.PRNGKey(0), (1, 2, 3))
    leaves = jax.tree.leaves(state)
    assert len(leaves) == 3 and all(isinstance(x, jax.Array) for x in leaves)
    step = jax.jit(lambda st: diffusion.sampler_step(st, lambda x, t: 0 * x, s, ts))
    out = step(state)
    assert int(out.step) == 1 and out.x.shape == (1, 2, 3)
    assert list(diffusion.sampling_timesteps(100, 4)) == [99, 66, 33, 0]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 53])
def test_windowed_generation_any_length(model, n):
    m = perturbed(model)
    audio = jax.random.normal(jax.random.PRNGKey(0), (2, n, m.audio_dim))
    cond = {"gaze": jnp.zeros((2, 2)), "distance": jnp.zeros((2,)),
            "emotion": jnp.zeros((2,), jnp.int32)}
    s = diffusion.make_schedule("cosine", 100)
    gen = jax.jit(lambda a, k: generate_motion(m, a, cond, k, s, num_steps=3,
                                               cfg_scales={"audio": 0.5}))
    out = gen(audio, jax.random.PRNGKey(1))
    assert out.shape == (2, n, m.motion_dim) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_array_equal(out, gen(audio, jax.random.PRNGKey(1)))


@pytest.mark.parametrize("stride", [3, 7])
def test_low_latency_motion_depends_only_on_audio_heard(model, stride):
    """``stride`` S: frames [0, kS) come from the audio of frames [0, kS) alone (a window never
    sees the audio past its S-th frame), at any length."""
    m = perturbed(model)
    n = 2 * m.window + 5
    audio = jax.random.normal(jax.random.PRNGKey(0), (1, n, m.audio_dim))
    cond = {"gaze": jnp.zeros((1, 2)), "distance": jnp.zeros((1,)),
            "emotion": jnp.zeros((1,), jnp.int32)}
    s = diffusion.make_schedule("cosine", 100)
    gen = jax.jit(lambda a: generate_motion(m, a, cond, jax.random.PRNGKey(1), s, num_steps=2,
                                            cfg_scales={"audio": 0.5}, stride=stride))
    out = gen(audio)
    assert out.shape == (1, n, m.motion_dim) and bool(jnp.all(jnp.isfinite(out)))
    heard = 3 * stride
    other = gen(audio.at[:, heard:].set(-audio[:, heard:]))
    np.testing.assert_array_equal(out[:, :heard], other[:, :heard])
    assert float(jnp.abs(out[:, heard:] - other[:, heard:]).max()) > 0


def test_mel_frontend_alignment():
    """Row k of the features describes samples [640 k, 640 (k + 1)): a burst in frame 7 lights
    up row 7 most."""
    fe = make_frontend("mel", n_mels=20)
    audio = np.zeros(20 * 640, np.float32)
    audio[7 * 640 + 100: 7 * 640 + 540] = np.random.default_rng(0).normal(0, 0.5, 440)
    f = fe(audio)
    assert f.shape == (20, fe.dim) and fe.dim == 80
    assert int(np.argmax(f.mean(axis=1))) == 7
    with pytest.raises(ValueError, match="multiple of 640"):
        fe(np.zeros(1000, np.float32))
    np.testing.assert_allclose(fe(np.stack([audio, audio]))[1], f, rtol=1e-5)
    # 16-bit PCM is read as [-1, 1] (on audio above the quantisation floor).
    noisy = audio + np.random.default_rng(1).normal(0, 0.01, audio.shape).astype(np.float32)
    noisy = np.clip(noisy, -1.0, 32767 / 32768)
    pcm = np.round(noisy * 32768).astype(np.int16)
    np.testing.assert_allclose(fe(pcm), fe(noisy), atol=0.05)


def test_learned_layer_mix_of_stacked_audio_features():
    """``audio_layers=3``: identical stacked vectors give the one-vector model's output whatever
    the mix weights; different vectors make the mix weights trainable (non-zero gradient)."""
    c = get_config("test").model
    c3 = c.copy_and_resolve_references()
    c3.audio_dim, c3.audio_layers = 3 * c.audio_dim, 3
    three = perturbed(make_motion_dit(c3, rngs=nnx.Rngs(0)))
    one = make_motion_dit(c, rngs=nnx.Rngs(0))  # then given three's weights, bar the mix
    shared = nnx.state(three).to_pure_dict()
    shared.pop("audio_mix")
    for k in ("audio_mean", "audio_std"):
        shared[k] = shared[k][: c.audio_dim]
    state = nnx.state(one)
    nnx.replace_by_pure_dict(state, shared)
    nnx.update(one, state)
    cond = _cond(one, jax.random.PRNGKey(0))
    x, t = jax.random.normal(jax.random.PRNGKey(1), (B, one.window, one.motion_dim)), jnp.ones(B)
    stacked = {**cond, "audio": jnp.tile(cond["audio"], 3),
               "audio_pre": jnp.tile(cond["audio_pre"], 3)}
    three.audio_mix[...] = jnp.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(_jit(three)(x, t, stacked), _jit(one)(x, t, cond), atol=1e-5)
    mixed = {**cond, "audio": jnp.concatenate([cond["audio"], -cond["audio"], 0 * cond["audio"]],
                                              -1), "audio_pre": stacked["audio_pre"]}
    graphdef, params, rest = nnx.split(three, nnx.Param, ...)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x, t, mixed) ** 2)))(
        params)
    assert float(jnp.abs(grad["audio_mix"][...]).max()) > 0
    with pytest.raises(ValueError, match="audio_layers=3"):
        c3.audio_dim = 10
        make_motion_dit(c3, rngs=nnx.Rngs(0))
