"""TalkingFacePipeline: the compiled window scan, streaming, controls, and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from flax import nnx

from configs import latent as latent_configs
from configs import motion as motion_configs
from data_pipeline.synthtalk.generate import generate_clip
from model_helpers import perturbed
from vasa_jax.media.errors import InputError
from vasa_jax.motion import diffusion
from vasa_jax.pipeline import Controls, TalkingFacePipeline
from vasa_jax.motion.audio import frontend_from_config

CONTROLS = Controls(gaze=(0.1, -0.1), emotion=1, steps=3, cfg=(("audio", 0.5), ("gaze", 1.0)))


@pytest.fixture(scope="module")
def pipe():
    lc, mc = latent_configs.get_config("test"), motion_configs.get_config("test")
    mc.model.motion_dim = 7 + lc.model.dyn_dim
    from vasa_jax.latent.model import make_face_latent_model
    from vasa_jax.motion.dit import make_motion_dit

    latent = make_face_latent_model(lc.model, rngs=nnx.Rngs(0))
    motion = perturbed(make_motion_dit(mc.model, rngs=nnx.Rngs(1)), seed=2, scale=0.05)
    return TalkingFacePipeline(latent, motion, schedule=diffusion.make_schedule("cosine", 100),
                               frontend=frontend_from_config(mc.audio), max_seconds=10.0)


@pytest.fixture(scope="module")
def clip():
    return generate_clip(0, 3, 0, 200, 64)


@pytest.fixture(scope="module")
def source(pipe, clip):
    return pipe.prepare_source(clip["frames"][0])


def _audio(clip, frames, extra=0):
    return clip["audio"][: frames * 640 + extra]


def test_scan_equals_python_loop_of_the_sampler(pipe, source, clip):
    """The one compiled program (scan over windows, fori_loop over steps) gives the motion of a
    Python loop over windows and denoising steps, each step jitted alone."""
    audio = _audio(clip, 2 * pipe.window + 5)
    out = pipe.generate(source, audio, CONTROLS)
    motion_model = nnx.merge(pipe._graphdefs[0], pipe._states[0])
    graphdef, state = nnx.split(motion_model)
    feats = pipe.features(audio)
    w, k, m = pipe.window, pipe.context, motion_model.motion_dim
    ts = jnp.asarray(diffusion.sampling_timesteps(pipe.schedule.num_steps, CONTROLS.steps))
    scales = dict(CONTROLS.scales())

    @jax.jit
    def one_step(state, st, cond, drop):
        model = nnx.merge(graphdef, state)
        den = diffusion.guided_denoiser(model, scales)
        return diffusion.sampler_step(st, lambda x, t: den(x, t, cond, drop), pipe.schedule, ts)

    key = jax.random.PRNGKey(CONTROLS.seed)
    motion_pre = jnp.zeros((1, k, m))
    audio_pre = jnp.zeros((1, k, motion_model.audio_dim))
    rows = []
    for i in range(-(-len(feats) // w)):
        a = np.zeros((1, w, feats.shape[1]), np.float32)
        part = feats[i * w:(i + 1) * w]
        a[0, :len(part)] = part
        ok = jnp.arange(w) < len(part)
        a = jnp.where(ok[None, :, None], motion_model.normalize_audio(jnp.asarray(a)), 0.0)
        cond = {"audio": a, "audio_pre": audio_pre, "motion_pre": motion_pre,
                "gaze": jnp.asarray([CONTROLS.gaze]), "distance": jnp.zeros((1,)),
                "emotion": jnp.asarray([CONTROLS.emotion])}
        drop = {"audio": jnp.zeros((1,), bool), "context": jnp.full((1,), i == 0),
                "gaze": jnp.zeros((1,), bool), "distance": jnp.ones((1,), bool),
                "emotion": jnp.zeros((1,), bool), "audio_frames": ok[None]}
        st = diffusion.init_sampler(jax.random.fold_in(key, i), (1, w, m))
        for _ in range(CONTROLS.steps):
            st = one_step(state, st, cond, drop)
        motion_pre, audio_pre = st.x[:, w - k:], a[:, w - k:]
        rows.append(np.asarray(motion_model.denormalize_motion(st.x))[0, :len(part)])
    np.testing.assert_allclose(out.motion, np.concatenate(rows), atol=1e-5)


@pytest.mark.parametrize("frames", [1, "W-1", "W", "10W+3"])
def test_streaming_equals_offline_at_any_length(pipe, source, clip, frames):
    w = pipe.window
    n = {"W-1": w - 1, "W": w, "10W+3": 10 * w + 3}.get(frames, frames)
    audio = np.tile(clip["audio"], 1 + n * 640 // len(clip["audio"]))[: n * 640 - 100]
    off = pipe.generate(source, audio, CONTROLS, float_frames=True)
    assert off.frames.shape == (n, 64, 64, 3) and off.motion.shape[0] == n
    assert np.all(np.isfinite(off.frames))
    rng = np.random.default_rng(n)
    cuts = np.sort(rng.integers(0, len(audio), size=max(1, len(audio) // 3000)))
    chunks = np.split(audio, cuts)  # uneven pieces, some empty
    pieces = list(pipe.stream(source, chunks, CONTROLS, float_frames=True))
    assert [len(p) for p in pieces[:-1]] == [w] * (len(pieces) - 1)
    np.testing.assert_array_equal(np.concatenate(pieces), off.frames)  # bit for bit
    uint8 = pipe.generate(source, audio, CONTROLS).frames
    assert uint8.dtype == np.uint8
    assert np.abs(uint8.astype(int) - np.round((off.frames + 1) * 127.5)).max() <= 1


@pytest.mark.parametrize("stride", [3, 5])  # S < K = 4 and K < S < W = 16
def test_low_latency_streaming_commits_frames_from_the_audio_heard_so_far(pipe, source, clip,
                                                                          stride):
    """With stride S < W each window yields S frames as soon as S frames of audio (plus the
    frontend's look-ahead) are in; the output is ``generate(stride=S)``'s bit for bit, and
    frames already yielded do not depend on any later audio."""
    n, ctx = 2 * pipe.window + 7, pipe.frontend.context_frames
    audio = _audio(clip, n)
    off = pipe.generate(source, audio, CONTROLS, float_frames=True, stride=stride)
    assert off.frames.shape[0] == n and np.all(np.isfinite(off.frames))
    chunks = np.split(audio, np.arange(640, len(audio), 640))  # 40 ms each, as a microphone
    heard, first_at = [0], []

    def feed():
        for c in chunks:
            heard[0] += len(c)
            yield c

    pieces = []
    for p in pipe.stream(source, feed(), CONTROLS, float_frames=True, stride=stride):
        first_at.append(heard[0] // 640)
        pieces.append(p)
    assert [len(p) for p in pieces[:-1]] == [stride] * (len(pieces) - 1)
    assert first_at[0] == stride + ctx  # the first frames waited for S + look-ahead frames only
    np.testing.assert_array_equal(np.concatenate(pieces), off.frames)
    # Causal: other audio after what the first two windows heard leaves their frames as they were.
    cut = (2 * stride + ctx) * 640
    other = np.concatenate([audio[:cut], audio[cut:][::-1]])
    again = pipe.generate(source, other, CONTROLS, float_frames=True, stride=stride)
    np.testing.assert_array_equal(again.frames[:2 * stride], off.frames[:2 * stride])
    assert np.abs(again.frames[-stride:] - off.frames[-stride:]).max() > 0
    # S = W is the non-overlapping streaming of before.
    np.testing.assert_array_equal(
        pipe.generate(source, audio, CONTROLS, stride=pipe.window).frames,
        pipe.generate(source, audio, CONTROLS).frames)
    with pytest.raises(ValueError, match="stride"):
        next(pipe.stream(source, chunks, CONTROLS, stride=pipe.window + 1))


def test_controls_and_seed(pipe, source, clip):
    audio = _audio(clip, 20)
    a = pipe.generate(source, audio, CONTROLS).motion
    np.testing.assert_array_equal(a, pipe.generate(source, audio, CONTROLS).motion)
    other_seed = Controls(**{**CONTROLS.__dict__, "seed": 1})
    assert np.abs(pipe.generate(source, audio, other_seed).motion - a).mean() > 1e-3
    other_gaze = Controls(**{**CONTROLS.__dict__, "gaze": (-0.4, 0.4)})
    assert np.abs(pipe.generate(source, audio, other_gaze).motion - a).mean() > 1e-4
    dropped = Controls(steps=3)  # no gaze/emotion: their nulls; guidance on audio only
    assert dropped.scales() == (("audio", 0.5),)
    assert np.all(np.isfinite(pipe.generate(source, audio, dropped).motion))
    with pytest.raises(ValueError, match="sampler"):
        pipe.generate(source, audio, Controls(sampler="euler"))
    with pytest.raises(ValueError, match="emotion"):
        pipe.generate(source, audio, Controls(emotion=7))


def test_progress_is_reported_per_window(pipe, source, clip):
    seen = []
    pipe.generate(source, _audio(clip, 2 * pipe.window + 1), CONTROLS,
                  progress=lambda d, n: seen.append((d, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_offline_length_limit_and_empty_audio(pipe, source):
    with pytest.raises(InputError, match="offline limit"):
        pipe.generate(source, np.zeros(11 * 16000, np.float32) + 0.1, CONTROLS)
    with pytest.raises(InputError, match="non-empty"):
        pipe.generate(source, np.zeros(0, np.float32), CONTROLS)


def test_motion_width_mismatch_names_the_fix():
    lc, mc = latent_configs.get_config("test"), motion_configs.get_config("test")
    from vasa_jax.latent.model import make_face_latent_model
    from vasa_jax.motion.dit import make_motion_dit

    latent = make_face_latent_model(lc.model, rngs=nnx.Rngs(0))
    motion = make_motion_dit(mc.model, rngs=nnx.Rngs(1))  # 12-d ground-truth motion
    with pytest.raises(ValueError, match="latents"):
        TalkingFacePipeline(latent, motion, schedule=diffusion.make_schedule("cosine", 100),
                            frontend=frontend_from_config(mc.audio))


def test_source_from_photo_with_face_detection(pipe, tmp_path):
    from PIL import Image

    path = tmp_path / "astronaut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(path, quality=92)
    src = pipe.prepare_source(str(path))
    assert src.crop.shape == (64, 64, 3) and src.v_app.shape[0] == 1
    assert bool(jnp.all(jnp.isfinite(src.v_app)))
    as_is = pipe.prepare_source(skimage.data.astronaut(), detect=False)
    assert as_is.crop.shape == (64, 64, 3)
    assert np.abs(as_is.crop.astype(int) - src.crop).mean() > 10  # the crop moved the face
