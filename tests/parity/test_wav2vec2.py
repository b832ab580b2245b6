"""wav2vec 2.0 (``vasa_jax.motion.wav2vec2``) and its Hugging Face converter
(``vasa_jax.interop.wav2vec2``), against ``transformers``' PyTorch ``Wav2Vec2Model``.

The reference models are built from configs with random weights (no downloads), re-randomised at
unit scale with a fixed seed (HF's init has zero biases, unit norms and 0.02-std linears, which
would hide layout mistakes), saved with ``save_pretrained`` and converted with ``convert_hf``.
Parity: every hidden state (``output_hidden_states=True``) within 1e-4 max abs in float32, for
the real base layout (95M parameters; group norm, post-norm) and a tiny large layout (layer norm,
pre-norm, even positional kernel), at several lengths, with and without a padding mask.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from vasa_jax.interop import files
from vasa_jax.interop import wav2vec2 as conv
from vasa_jax.motion.wav2vec2 import (Wav2Vec2Config, Wav2Vec2Model, feature_lengths,
                                      normalize_audio, num_feature_frames, num_params)

os.environ.setdefault("USE_TF", "0")  # transformers would otherwise import TensorFlow (slow)
os.environ.setdefault("USE_FLAX", "0")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- reference models --------------------------------------------------------------------------

def hf_config(config: Wav2Vec2Config, **extra):
    return transformers.Wav2Vec2Config(**config.to_dict(), **extra)


def randomize_torch(model, seed: int):
    """Every parameter at unit scale: linear/conv weights ~ N(0, 1/fan_in), norm weights
    ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2), weight-norm gains ~ U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("original0", "weight_g")):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model.eval()


def build_hf(cls, config: Wav2Vec2Config, seed: int, **extra):
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():  # we overwrite every parameter anyway
        model = cls(hf_config(config, **extra))
    return randomize_torch(model, seed)


def torch_hidden_states(model, audio, mask=None) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(audio),
                    attention_mask=None if mask is None else torch.from_numpy(mask),
                    output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def jitted(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    fn = jax.jit(lambda p, a, m: nnx.merge(graphdef, p, rest)(a, m))
    return lambda audio, mask=None: [np.asarray(h) for h in fn(params, audio, mask)]


def padded_batch(lengths, total, seed):
    """Random audio (B, total) with rows zero-padded after ``lengths``, and its int mask."""
    r = np.random.default_rng(seed)
    mask = (np.arange(total)[None] < np.asarray(lengths)[:, None])
    audio = (0.3 * r.standard_normal((len(lengths), total)) * mask).astype(np.float32)
    return audio, mask.astype(np.int32)


def check_parity(name, tmodel, run, config) -> None:
    """Three cases: 1 s x 3 unmasked, one odd ~0.5 s clip, and a padded batch (1 s, 0.5 s, odd)
    with a mask; prints the max abs error of every layer."""
    r = np.random.default_rng(1)
    cases = {
        "1 s x 3": ((0.3 * r.standard_normal((3, 16000))).astype(np.float32), None),
        "0.5 s + 123 samples": ((0.3 * r.standard_normal((1, 8123))).astype(np.float32), None),
        "padded 1 s / 0.5 s / 12345 + mask": padded_batch([16000, 8000, 12345], 16000, 2),
    }
    for case, (audio, mask) in cases.items():
        ours, ref = run(audio, mask), torch_hidden_states(tmodel, audio, mask)
        assert len(ours) == len(ref) == config.num_hidden_layers + 1
        frames = num_feature_frames(config, audio.shape[1])
        errs = []
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert a.shape == b.shape == (audio.shape[0], frames, config.hidden_size), i
            errs.append(float(np.abs(a - b).max()))
        scale = max(float(np.abs(b).max()) for b in ref)
        print(f"\n{name} [{case}]: max |ours - HF| per layer "
              f"{' '.join(f'{e:.1e}' for e in errs)} (max |HF| {scale:.1f})")
        assert max(errs) < TOL, (case, errs)
        if mask is not None:  # the mask changes the padded rows (so it was really tested)
            unmasked = run(audio, None)  # (3, 16000) unmasked: compiled for the first case
            assert np.abs(unmasked[-1][1] - ours[-1][1]).max() > 1e-2
            np.testing.assert_allclose(unmasked[-1][0], ours[-1][0], atol=1e-5)  # full row


@pytest.fixture(scope="module")
def tiny_large(tmp_path_factory):
    """(torch model, safetensors dir, pytorch_model.bin dir) of the tiny large layout."""
    config = Wav2Vec2Config.tiny_large()
    tmodel = build_hf(transformers.Wav2Vec2Model, config, seed=0)
    st = str(tmp_path_factory.mktemp("tiny_large_st"))
    pt = str(tmp_path_factory.mktemp("tiny_large_pt"))
    tmodel.save_pretrained(st)
    tmodel.save_pretrained(pt, safe_serialization=False)
    return tmodel, st, pt


# -- parity ------------------------------------------------------------------------------------

def test_parity_base_layout(tmp_path):
    """The real base layout (95M parameters), from model.safetensors."""
    config = Wav2Vec2Config.base()
    tmodel = build_hf(transformers.Wav2Vec2Model, config, seed=1)
    tmodel.save_pretrained(tmp_path)
    assert os.path.exists(tmp_path / "model.safetensors")
    got_config, model = conv.convert_hf(tmp_path)
    assert got_config == config
    assert num_params(model) == sum(p.numel() for n, p in tmodel.named_parameters()
                                    if n != "masked_spec_embed")
    print(f"\nbase layout: {num_params(model) / 1e6:.2f}M parameters")
    check_parity("base (group norm, post-norm)", tmodel, jitted(model), config)


def test_parity_tiny_large_layout_from_bin(tiny_large):
    """The large layout (layer norm, pre-norm, final LayerNorm) from pytorch_model.bin; the
    safetensors copy converts to the same parameters."""
    tmodel, st, pt = tiny_large
    assert os.path.exists(os.path.join(pt, "pytorch_model.bin"))
    assert not os.path.exists(os.path.join(pt, "model.safetensors"))
    config, model = conv.convert_hf(pt)
    assert config == Wav2Vec2Config.tiny_large()
    check_parity("tiny large (layer norm, pre-norm)", tmodel, jitted(model), config)
    _, from_st = conv.convert_hf(st)
    for (path, a), (_, b) in zip(files.flat_variables(model), files.flat_variables(from_st)):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))


def test_pretraining_checkpoint_and_old_weight_norm_names(tmp_path):
    """A Wav2Vec2ForPreTraining checkpoint (``wav2vec2.`` prefix, quantizer, project_q/hid,
    masked_spec_embed) converts to its ``.wav2vec2`` encoder; so does the same checkpoint with
    the weight norm stored as weight_g/weight_v."""
    config = Wav2Vec2Config.tiny_base()
    tmodel = build_hf(transformers.Wav2Vec2ForPreTraining, config, seed=2,
                      codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8)
    tmodel.save_pretrained(tmp_path / "pre")
    raw = files.load_safetensors(tmp_path / "pre" / "model.safetensors")
    assert any(k.startswith("quantizer.") for k in raw) and "wav2vec2.masked_spec_embed" in raw
    _, model = conv.convert_hf(tmp_path / "pre")
    audio, mask = padded_batch([9000, 6001], 9000, 3)
    run = jitted(model)
    for m in (None, mask):
        ref = torch_hidden_states(tmodel.wav2vec2, audio, m)
        assert max(float(np.abs(a - b).max()) for a, b in zip(run(audio, m), ref)) < TOL

    old = {k.replace("parametrizations.weight.original0", "weight_g")
           .replace("parametrizations.weight.original1", "weight_v"): v for k, v in raw.items()}
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in old
    os.makedirs(tmp_path / "old")
    shutil.copy(tmp_path / "pre" / "config.json", tmp_path / "old" / "config.json")
    files.save_safetensors(tmp_path / "old" / "model.safetensors", old)
    _, model_old = conv.convert_hf(tmp_path / "old")
    for (path, a), (_, b) in zip(files.flat_variables(model), files.flat_variables(model_old)):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))


def test_large_preset_matches_hf_names_and_shapes():
    """The full large layout (315M) has exactly HF's tensors (names and shapes), abstractly."""
    with torch.device("meta"):
        tmodel = transformers.Wav2Vec2Model(hf_config(Wav2Vec2Config.large()))
    want = {n: tuple(p.shape) for n, p in tmodel.state_dict().items() if n != "masked_spec_embed"}
    model = conv.abstract_model(Wav2Vec2Config.large())
    assert conv.torch_names(model) == want
    assert num_params(model) == sum(int(np.prod(s)) for s in want.values())


# -- checkpoints -------------------------------------------------------------------------------

def test_converted_checkpoint_reloads_bit_exact_without_torch(tiny_large, tmp_path):
    _, st, _ = tiny_large
    hf = tmp_path / "hf"
    shutil.copytree(st, hf)
    (hf / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": False, "sampling_rate": 16000, "return_attention_mask": True,
         "feature_size": 1, "padding_value": 0.0}))
    config, model = conv.convert_hf(hf)
    out = conv.save_converted(config, model, tmp_path / "conv", conv.read_preprocessor(hf))
    config2, model2, prep = conv.load_converted(out)
    assert config2 == config
    assert prep == {"do_normalize": False, "sampling_rate": 16000,
                    "return_attention_mask": True, "padding_value": 0.0}
    audio, mask = padded_batch([8000, 5555], 8000, 4)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    graphdef2, params2, _ = nnx.split(model2, nnx.Param, ...)
    assert graphdef2 == graphdef
    run = jax.jit(lambda p: nnx.merge(graphdef, p, rest)(audio, mask))
    for a, b in zip(run(params), run(params2)):  # one compiled program, two parameter sets
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileExistsError, match="not empty"):
        conv.save_converted(config, model, out)

    code = ("import sys, jax, numpy as np\n"
            "from vasa_jax.interop.wav2vec2 import load_converted\n"
            f"c, m, p = load_converted({out!r})\n"
            "h = jax.jit(lambda a: m(a))(np.zeros((1, 800), np.float32))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print(len(h), h[-1].shape)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "3 (1, 2, 32)"


# orbax's aborted reads of the garbage files below are reported when garbage-collected
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_converted_checkpoint_errors(tiny_large, tmp_path):
    _, st, _ = tiny_large
    config, model = conv.convert_hf(st)
    with pytest.raises(FileNotFoundError, match="vasa-jax convert wav2vec2"):
        conv.load_converted(tmp_path / "nothing")
    out = conv.save_converted(config, model, tmp_path / "c")
    # Damaged weights: every file of the orbax checkpoint overwritten with garbage.
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    for root, _, names in os.walk(bad / "params"):
        for n in names:
            with open(os.path.join(root, n), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(ValueError, match="vasa-jax convert wav2vec2.*--force"):
        conv.load_converted(bad)
    gc.collect()
    shutil.rmtree(bad / "params")
    with pytest.raises(FileNotFoundError, match="no params"):
        conv.load_converted(bad)
    # A config that does not match the stored weights.
    meta = json.loads((tmp_path / "c" / "wav2vec2.json").read_text())
    meta["config"]["intermediate_size"] = 48
    (tmp_path / "c" / "wav2vec2.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match wav2vec2.json.*mis-shaped.*"
                                         "intermediate_dense.kernel: got \\(32, 64\\)"):
        conv.load_converted(tmp_path / "c")
    (tmp_path / "c" / "wav2vec2.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        conv.load_converted(tmp_path / "c")
    gc.collect()


def test_hf_checkpoint_errors(tiny_large, tmp_path):
    _, st, pt = tiny_large
    raw = files.load_safetensors(os.path.join(st, "model.safetensors"))

    def hf_dir(name, tensors=None, config=None, weights=None):
        d = tmp_path / name
        os.makedirs(d)
        cfg = json.load(open(os.path.join(st, "config.json")))
        cfg.update(config or {})
        (d / "config.json").write_text(json.dumps(cfg))
        if weights is not None:
            (d / weights[0]).write_bytes(weights[1])
        elif tensors is not None:
            files.save_safetensors(d / "model.safetensors", tensors)
        return d

    removed = "encoder.layers.1.feed_forward.output_dense.bias"
    d = hf_dir("missing", {k: v for k, v in raw.items() if k != removed})
    with pytest.raises(ValueError, match=f"missing tensors.*{removed}"):
        conv.convert_hf(d)

    shaped = "encoder.layers.0.attention.k_proj.weight"
    d = hf_dir("misshaped", {**raw, shaped: raw[shaped][:, :-1]})
    with pytest.raises(ValueError, match=rf"mis-shaped tensors.*{shaped}: got \(32, 31\), "
                                         r"expected \(32, 32\)"):
        conv.convert_hf(d)

    d = hf_dir("other_config", raw, config={"intermediate_size": 48})
    with pytest.raises(ValueError, match="do not match its config.json.*mis-shaped.*"
                                         "intermediate_dense.weight: got \\(64, 32\\)"):
        conv.convert_hf(d)

    d = hf_dir("extra", {**raw, "adapter.proj.weight": raw[shaped]})
    with pytest.raises(ValueError, match="unexpected tensors.*adapter.proj.weight"):
        conv.convert_hf(d)

    for weights in (("model.safetensors", b"\x00garbage" * 10),
                    ("pytorch_model.bin", b"not a zip file at all")):
        d = hf_dir("garbage_" + weights[0].split(".")[1], weights=weights)
        with pytest.raises(ValueError, match=f"Cannot read .*{weights[0]}.*re-download"):
            conv.convert_hf(d)

    with pytest.raises(FileNotFoundError, match="no weights"):
        conv.convert_hf(hf_dir("noweights"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        conv.convert_hf(tmp_path)
    with pytest.raises(ValueError, match="add_adapter"):
        conv.convert_hf(hf_dir("adapter", raw, config={"add_adapter": True}))
    with pytest.raises(ValueError, match="model_type 'hubert'"):
        conv.convert_hf(hf_dir("hubert", raw, config={"model_type": "hubert"}))


# -- model -------------------------------------------------------------------------------------

def test_config_and_frame_counts(tiny_large):
    hf = transformers.Wav2Vec2Config(hidden_dropout=0.3, vocab_size=99, mask_time_prob=0.5)
    config = Wav2Vec2Config.from_hf_dict(hf.to_dict())
    assert config == Wav2Vec2Config.base()
    assert Wav2Vec2Config.from_hf_dict(Wav2Vec2Config.large().to_dict()) == Wav2Vec2Config.large()
    with pytest.raises(ValueError, match="feat_extract_norm='batch'"):
        Wav2Vec2Config.from_hf_dict({"feat_extract_norm": "batch"})
    with pytest.raises(ValueError, match="hidden_act='mish'"):
        Wav2Vec2Config(hidden_act="mish")

    tmodel = tiny_large[0]  # the same conv kernels and strides as the base layout
    for n in (400, 719, 720, 8000, 8123, 16000, 16001, 48000):
        hf_n = int(tmodel._get_feat_extract_output_lengths(torch.tensor(n)))
        assert num_feature_frames(config, n) == hf_n
    assert num_feature_frames(config, 16000) == 49 and config.hop_samples == 320
    np.testing.assert_array_equal(feature_lengths(config, np.array([400, 16000, 0])),
                                  [1, 49, 0])
    with pytest.raises(ValueError, match="fewer than the 400"):
        num_feature_frames(config, 399)


def test_normalize_audio_matches_hf_feature_extractor():
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    r = np.random.default_rng(5)
    clips = [(0.2 + r.standard_normal(n)).astype(np.float32) for n in (1000, 640)]
    got = fe(clips, sampling_rate=16000, padding=True, return_tensors="np")
    ours = normalize_audio(np.stack([clips[0], np.pad(clips[1], (0, 360))]),
                           got["attention_mask"])
    np.testing.assert_allclose(np.asarray(ours), got["input_values"], atol=1e-5)


def test_bfloat16_compute_and_axis_names():
    config = Wav2Vec2Config.tiny_large()
    model = Wav2Vec2Model(config, rngs=nnx.Rngs(0), dtype="bfloat16")
    audio, mask = padded_batch([16000, 7000], 16000, 6)
    states = jax.jit(lambda a, m: model(a, m))(audio, mask)
    assert len(states) == config.num_hidden_layers + 1
    for s in states:
        assert s.shape == (2, 49, config.hidden_size) and s.dtype == np.float32
        assert np.isfinite(np.asarray(s)).all()
    ref = jitted(Wav2Vec2Model(config, rngs=nnx.Rngs(0)))(audio, mask)  # same weights, fp32
    rel = np.abs(np.asarray(states[-1]) - np.asarray(ref[-1])).max() / np.abs(ref[-1]).max()
    assert rel < 0.1, rel
    for path, var in files.flat_variables(model):
        assert var.get_value().dtype == np.float32, path
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var.get_value().ndim, path


def test_cli_convert(tiny_large, tmp_path, capsys):
    from vasa_jax.cli import main

    _, st, _ = tiny_large
    out = tmp_path / "out"
    assert main(["convert", "wav2vec2", "--hf-dir", st, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer-norm feature encoder, pre-norm transformer" in printed
    assert "2 layers x 32" in printed and "M parameters" in printed
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directory left behind
    assert main(["convert", "wav2vec2", "--hf-dir", st, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", "wav2vec2", "--hf-dir", st, "--out", str(out), "--force"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert main(["convert", "wav2vec2", "--hf-dir", str(tmp_path), "--out",
                 str(tmp_path / "o2")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o2")
    config, model, prep = conv.load_converted(out)
    assert config == Wav2Vec2Config.tiny_large() and prep["do_normalize"] is True
