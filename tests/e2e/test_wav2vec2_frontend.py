"""The wav2vec2 audio frontend: alignment to 25 fps against HF's PyTorch model, layer choice and
mix, chunked long audio in one compiled program, and a motion ``test`` config training with it."""

import os

import numpy as np
import pytest

from vasa_jax.constants import SAMPLES_PER_FRAME
from vasa_jax.motion.audio import Wav2Vec2Frontend, features_for_frames, make_frontend

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_hf_config():
    """A tiny model with the base layout (group norm, post-norm) and the real 320-sample stride."""
    return transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
        do_stable_layer_norm=False, hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)


@pytest.fixture(scope="module")
def tiny_w2v(tmp_path_factory):
    """(torch model, converted checkpoint dir) of one randomly initialised tiny wav2vec 2.0."""
    from vasa_jax.interop.wav2vec2 import convert_hf, save_converted

    torch.manual_seed(0)
    model = transformers.Wav2Vec2Model(_tiny_hf_config()).eval()
    with torch.no_grad():  # normal-scale weights, so every layer matters to the comparison
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == 16 else 0))
    hf_dir = tmp_path_factory.mktemp("hf")
    model.save_pretrained(hf_dir)
    out = str(tmp_path_factory.mktemp("w2v") / "tiny")
    config, converted = convert_hf(str(hf_dir))
    save_converted(config, converted, out, preprocessor={"do_normalize": True})
    return model, out


def _torch_frames(model, audio: np.ndarray, layer: int) -> np.ndarray:
    """HF's hidden state ``layer`` on the normalised, 80-sample-padded audio, averaged in pairs
    of 50 Hz frames: the frontend's definition, computed with the reference model."""
    x = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    x = np.pad(x, (0, 80)).astype(np.float32)
    with torch.no_grad():
        hs = model(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states[layer][0]
    h = hs.numpy()
    return h.reshape(len(h) // 2, 2, -1).mean(1)


def test_frames_match_the_reference_model_layer_by_layer(tiny_w2v):
    model, ckpt = tiny_w2v
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 37 * SAMPLES_PER_FRAME).astype(np.float32)
    for layer in (0, 1, -1):
        fe = make_frontend("wav2vec2", checkpoint=ckpt, layer=layer)
        got = fe(audio)
        assert got.shape == (37, 32) and fe.dim == 32 and fe.num_layers_out == 1
        np.testing.assert_allclose(got, _torch_frames(model, audio, layer), atol=1e-4, rtol=0)
    # 16-bit PCM and batches go through the same path.
    pcm = (audio * 32767).astype(np.int16)
    batch = np.stack([pcm, pcm[::-1]])
    fe = make_frontend("wav2vec2", checkpoint=ckpt)
    out = fe(batch)
    assert out.shape == (2, 37, 32)
    np.testing.assert_allclose(out[1], fe(pcm[::-1]), atol=1e-5)


def test_mixed_layers_stack_every_hidden_state(tiny_w2v):
    model, ckpt = tiny_w2v
    audio = np.random.default_rng(1).normal(0, 0.1, 10 * SAMPLES_PER_FRAME).astype(np.float32)
    fe = make_frontend("wav2vec2", checkpoint=ckpt, mix_layers=True)
    assert fe.num_layers_out == 3 and fe.dim == 96
    out = fe(audio).reshape(10, 3, 32)
    for layer in range(3):
        np.testing.assert_allclose(out[:, layer], _torch_frames(model, audio, layer), atol=1e-4)


def test_long_audio_is_processed_in_fixed_size_chunks(tiny_w2v):
    """Each chunk's rows come from a model call on the chunk plus its context (shifted inward at
    the ends), and every call has one shape: one compiled program however long the audio."""
    _, ckpt = tiny_w2v
    fe = Wav2Vec2Frontend(checkpoint=ckpt, chunk_frames=8, context_frames=3)
    t = 29
    audio = np.random.default_rng(2).normal(0, 0.1, t * SAMPLES_PER_FRAME).astype(np.float32)
    runner = fe._runner()
    before = runner._features._cache_size()
    got = fe(audio)
    assert got.shape == (t, 32)
    assert runner._features._cache_size() - before == 1
    x = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    x = np.pad(x, (0, 80))
    span = 8 + 2 * 3
    for a, s in ((0, 0), (8, 5), (16, 13), (24, 15)):  # chunk start, its input window start
        want = runner(x[None, s * 640:(s + span) * 640 + 80].astype(np.float32), -1)[0]
        np.testing.assert_allclose(got[a:a + 8], want[a - s:a - s + 8], atol=1e-6)
    # Streaming's window-by-window computation reads context_frames beyond the window.
    rows = features_for_frames(fe, audio, 10, 20)
    assert rows.shape == (10, 32) and np.isfinite(rows).all()


def test_bfloat16_compute_gives_finite_features_of_the_same_shape(tiny_w2v):
    _, ckpt = tiny_w2v
    audio = np.random.default_rng(3).normal(0, 0.1, 6 * SAMPLES_PER_FRAME).astype(np.float32)
    out = make_frontend("wav2vec2", checkpoint=ckpt, dtype="bfloat16")(audio)
    assert out.shape == (6, 32) and out.dtype == np.float32 and np.isfinite(out).all()


def test_missing_checkpoint_or_bad_layer_is_a_clear_error(tiny_w2v, tmp_path):
    _, ckpt = tiny_w2v
    with pytest.raises(ValueError, match="vasa-jax convert wav2vec2"):
        make_frontend("wav2vec2")
    with pytest.raises(ValueError, match="has 3 hidden states"):
        make_frontend("wav2vec2", checkpoint=ckpt, layer=3)
    with pytest.raises(Exception, match="vasa-jax convert wav2vec2"):
        make_frontend("wav2vec2", checkpoint=str(tmp_path / "nothing_here"))


@pytest.mark.slow
def test_motion_test_config_trains_with_the_wav2vec2_frontend(tiny_w2v, synthtalk_tiny, tmp_path):
    """``motion.py:test_wav2vec2``: feature width and layer count come from the checkpoint, the
    loss falls, and the learned layer mix moves away from its even start."""
    from configs.motion import get_config
    from trainer_configs import make_test_config
    from vasa_jax.train.motion_task import MotionTask
    from vasa_jax.train.trainer import Trainer

    _, ckpt = tiny_w2v
    c = make_test_config(lambda _: get_config("test_wav2vec2"), synthtalk_tiny,
                         **{"audio.checkpoint": ckpt, "train.steps": 40,
                            "optim.decay_steps": 40})
    trainer = Trainer(MotionTask(c), c, str(tmp_path))
    assert (c.model.audio_dim, c.model.audio_layers) == (96, 3)
    trainer.fit()
    losses = _losses(str(tmp_path))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.7 * first, (first, last)
    assert np.abs(np.asarray(trainer.model(ema=False).audio_mix[...])).max() > 1e-4
    # The run reloads from its workdir with the filled-in widths and the same frontend.
    from vasa_jax.models import restore_model

    reloaded = restore_model(str(tmp_path))
    assert reloaded.config.model.audio_dim == 96 and reloaded.config.audio.frontend == "wav2vec2"


def _losses(workdir: str) -> list[float]:
    from vasa_jax.train.trainer import read_metrics

    return [r["loss"] for r in sorted(read_metrics(workdir), key=lambda r: r["step"])
            if "loss" in r]


def test_runner_cache_is_shared_per_checkpoint(tiny_w2v):
    _, ckpt = tiny_w2v
    a = Wav2Vec2Frontend(checkpoint=ckpt, layer=0)
    b = Wav2Vec2Frontend(checkpoint=ckpt + "/", layer=1)
    assert a._runner() is b._runner()


def test_latents_builder_records_and_rebuilds_the_wav2vec2_frontend(tiny_w2v):
    """The latents builder names its dataset from the frontend's full settings and rebuilds the
    frontend from them (in Beam workers too): the same features either way."""
    from data_pipeline.latents import latents_dataset_builder as lb
    from vasa_jax.motion.audio import frontend_from_config

    _, ckpt = tiny_w2v
    settings = lb._frontend_settings({"frontend": "wav2vec2", "checkpoint": ckpt, "layer": 1})
    assert settings["frontend"] == "wav2vec2" and settings["checkpoint"] == os.path.abspath(ckpt)
    assert settings["layer"] == 1 and settings["mix_layers"] is False
    audio = np.random.default_rng(4).normal(0, 0.1, 5 * SAMPLES_PER_FRAME).astype(np.float32)
    np.testing.assert_array_equal(frontend_from_config(settings)(audio),
                                  make_frontend("wav2vec2", checkpoint=ckpt, layer=1)(audio))


def test_latents_built_from_the_cli_store_wav2vec2_features(tiny_w2v, stage1_workdir,
                                                           synthtalk_tiny, tmp_path):
    """``vasa-jax data build latents --audio frontend=wav2vec2 --audio checkpoint=DIR``: the
    stored audio features are the frontend's on each clip's audio."""
    from data_pipeline.loader import open_source
    from vasa_jax.cli import main

    _, ckpt = tiny_w2v
    out = str(tmp_path / "tfds")
    assert main(["data", "build", "latents", "--stage1-workdir", stage1_workdir,
                 "--source-config", "res64_tiny", "--source-data-dir", synthtalk_tiny,
                 "--data-dir", out, "--audio", "frontend=wav2vec2", "--audio",
                 f"checkpoint={ckpt}", "--audio", "layer=1"]) == 0
    (name,) = os.listdir(os.path.join(out, "latents"))
    lat, info = open_source("latents", name, "test", out)
    src, _ = open_source("synthtalk", "res64_tiny", "test", synthtalk_tiny)
    assert info.metadata["audio"]["frontend"] == "wav2vec2"
    want = make_frontend("wav2vec2", checkpoint=ckpt, layer=1)(src[0]["audio"])
    np.testing.assert_allclose(lat[0]["audio_features"], want, atol=1e-5)
