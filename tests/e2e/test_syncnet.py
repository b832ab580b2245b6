"""SyncNet lip-sync instrument: MFCC parity, model shapes, the original weights' converter,
LSE-C / LSE-D arithmetic, and real training on res64_tiny with held-out metrics and loading."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from instrument_runs import copied_run

from vasa_jax.instruments import mfcc as mfcc_lib
from vasa_jax.instruments import syncnet as sn
from vasa_jax.instruments import syncnet_convert
from vasa_jax.instruments.load import load_syncnet


# -- MFCC ------------------------------------------------------------------------------------------

def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    for n in (400, 401, 25 * 640, 12345):
        sig = (rng.standard_normal(n) * 3000).astype(np.int16)
        ref = psf.mfcc(sig, 16000)
        ours = mfcc_lib.mfcc(sig)
        assert ours.shape == ref.shape == (mfcc_lib.num_mfcc_frames(n), 13)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)
    # Batched, and the SyncNet layout: 4 columns per video frame, 4 T - 1 for T frames.
    audio = rng.standard_normal((2, 10 * 640)).astype(np.float32) * 0.1
    feats = mfcc_lib.syncnet_mfcc(audio)
    assert feats.shape == (2, 13, 39) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[1], psf.mfcc(audio[1] * 32768.0, 16000).T, rtol=1e-5,
                               atol=1e-4)
    patches = mfcc_lib.mfcc_patches(feats[0], [0, 3])
    assert patches.shape == (2, 13, 20)
    np.testing.assert_array_equal(patches[1], feats[0][:, 12:32])


# -- model -----------------------------------------------------------------------------------------

def test_small_syncnet_shapes_and_axis_names():
    model = sn.make_syncnet(size="small", rngs=nnx.Rngs(0), lip_widths=(8, 8, 8, 16),
                            audio_widths=(8, 8, 8, 16), fc_hidden=16, embed_dim=16)
    assert model.image_size == (32, 40)
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 32, 40, 3), dtype=np.uint8)
    net = sn.SyncNet(model)  # jit-compiled embeddings
    v = net.embed_video(frames)
    a = net.embed_audio(np.random.default_rng(1).standard_normal((4, 13, 20)))
    assert v.shape == (3, 16) and a.shape == (4, 16) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-5)  # normalised
    with pytest.raises(ValueError, match="mouth_crops"):
        net.embed_video(np.zeros((1, 5, 64, 64, 3), np.uint8))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert "out_sharding" in var.get_metadata(), path  # logical axes (replicated)
    # Mouth crops of 64 px frames are the model's native size.
    crops = sn.mouth_crops(np.zeros((7, 64, 64, 3), np.uint8), model.crop, model.image_size)
    assert crops.shape == (7, 32, 40, 3)


def test_original_layout_needs_224_inputs():
    m = nnx.eval_shape(lambda: sn.make_syncnet(size="original", rngs=nnx.Rngs(0)))
    assert m.lip.layers[-1].conv.kernel.shape == (1, 6, 6, 256, 512)  # the published (1, 6, 6)
    assert m.audio.layers[-1].conv.kernel.shape == (5, 4, 256, 512)  # and (5, 4)
    assert m.lip.fc2.kernel.shape == (512, 1024)
    with pytest.raises(ValueError, match="too small"):
        nnx.eval_shape(lambda: sn.make_syncnet(size="original", image_size=(32, 32),
                                               rngs=nnx.Rngs(0)))


# -- converter -------------------------------------------------------------------------------------

def _torch_reference(lip_layers, audio_layers, fc_hidden, embed_dim, image_size):
    """A PyTorch SyncNet written for this test, with the published state_dict key layout
    (nn.Sequential netcnnaud / netfcaud / netcnnlip / netfclip)."""
    import torch
    from torch import nn

    def stack(layers, cin, size, three_d):
        conv, bn, pool = ((nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d) if three_d
                          else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d))
        mods = []
        for spec in layers:
            if spec[0] == "conv":
                _, cout, k, s, p = spec
                k = size if k == "rest" else k
                mods += [conv(cin, cout, k, stride=s, padding=p), bn(cout), nn.ReLU()]
                cin = cout
            else:
                _, k, s, p = spec
                mods.append(pool(k, stride=s, padding=p))
            size = tuple((n + 2 * pp - kk) // ss + 1 for n, kk, ss, pp in zip(size, k, s, p))
        return nn.Sequential(*mods), cin

    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.netcnnaud, ca = stack(audio_layers, 1, (13, 20), False)
            self.netcnnlip, cl = stack(lip_layers, 3, (5,) + tuple(image_size), True)
            self.netfcaud = nn.Sequential(nn.Linear(ca, fc_hidden), nn.BatchNorm1d(fc_hidden),
                                          nn.ReLU(), nn.Linear(fc_hidden, embed_dim))
            self.netfclip = nn.Sequential(nn.Linear(cl, fc_hidden), nn.BatchNorm1d(fc_hidden),
                                          nn.ReLU(), nn.Linear(fc_hidden, embed_dim))

        def forward_aud(self, x):
            return self.netfcaud(self.netcnnaud(x).flatten(1))

        def forward_lip(self, x):
            return self.netfclip(self.netcnnlip(x).flatten(1))

    torch.manual_seed(0)
    ref = Ref()
    with torch.no_grad():  # random BatchNorm statistics and affine parameters too
        for m in ref.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
    return ref.eval()


def test_converter_matches_a_torch_reference(tmp_path):
    torch = pytest.importorskip("torch")
    size = sn.SIZES["original"]  # the published network at full size (~2 s on a CPU)
    ref = _torch_reference(size["lip_layers"], size["audio_layers"], size["fc_hidden"],
                           size["embed_dim"], size["image_size"])
    path = str(tmp_path / "syncnet_v2.model")
    torch.save(ref.state_dict(), path)

    model = syncnet_convert.load_torch_weights(path)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 5, 224, 224, 3), dtype=np.uint8)  # RGB
    patches = (rng.standard_normal((3, 13, 20)) * 10).astype(np.float32)
    net = sn.SyncNet(model)
    ours_v, ours_a = net.embed_video(frames), net.embed_audio(patches)
    with torch.no_grad():  # the original convention: BGR 0..255, (n, 3, 5, H, W)
        x = torch.from_numpy(frames[..., ::-1].astype(np.float32).transpose(0, 4, 1, 2, 3).copy())
        ref_v = ref.forward_lip(x).numpy()
        ref_a = ref.forward_aud(torch.from_numpy(patches[:, None])).numpy()
    assert ours_v.shape == (2, 1024) and ours_a.shape == (3, 1024)
    scale_v, scale_a = np.abs(ref_v).max(), np.abs(ref_a).max()
    np.testing.assert_allclose(ours_v / scale_v, ref_v / scale_v, atol=1e-4)
    np.testing.assert_allclose(ours_a / scale_a, ref_a / scale_a, atol=1e-4)

    # Missing / wrongly shaped tensors are named.
    state = {k: v for k, v in ref.state_dict().items() if k != "netfclip.3.bias"}
    state["netcnnaud.0.weight"] = torch.zeros(64, 1, 5, 5)
    with pytest.raises(ValueError, match=r"netfclip\.3\.bias.*netcnnaud\.0\.weight"):
        syncnet_convert.convert_state_dict(state, model)

    # The evaluation table takes the original weights in place of a trained instrument.
    from vasa_jax.eval.clip_set import Clip
    from vasa_jax.eval.table import Instruments, read_clip_with

    inst = Instruments.load(syncnet_torch=path, fvd=False, lpips=False)
    inst.landmarks = False
    clip = Clip("c", rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8),
                (rng.standard_normal(12 * 640) * 0.1).astype(np.float32), {})
    sync = read_clip_with(inst, clip).sync
    assert set(sync) == {"lse_c", "lse_d", "offset"} and np.isfinite(sync["lse_d"])


# -- LSE-C / LSE-D ---------------------------------------------------------------------------------

def test_lse_curve_of_a_hand_built_case():
    emb = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    s = sn.scores_from_embeddings(emb, emb, vshift=1, pad="zero")
    # offset +1 (j=0): (v0, 0), (v1, a0), (v2, a1) -> 0, 1, 1; j=1: all 0; j=2: 1, 1, 2.
    np.testing.assert_allclose(s["curve"], [2 / 3, 0.0, 4 / 3], atol=1e-5)
    assert s["offset"] == 0 and s["lse_d"] == pytest.approx(0.0, abs=1e-5)
    assert s["lse_c"] == pytest.approx(2 / 3, abs=1e-5)
    edge = sn.scores_from_embeddings(emb, emb, vshift=1, pad="edge")
    np.testing.assert_allclose(edge["curve"], [2 / 3, 0.0, 2 / 3], atol=1e-5)


@pytest.mark.parametrize("k", [0, 2, -3, 7])
def test_delayed_video_embeddings_move_the_offset(k):
    rng = np.random.default_rng(k + 10)
    n, d = 60, 8
    e = rng.standard_normal((n + 2 * abs(k), d))
    audio = e[abs(k):abs(k) + n]
    video = e[abs(k) - k:abs(k) - k + n]  # v_i = a_{i - k}: the video lags by k frames
    for pad in ("zero", "edge"):
        s = sn.scores_from_embeddings(video, audio, vshift=15, pad=pad)
        assert s["offset"] == k
        assert s["curve"].shape == (31,)


class _EnergyNet:
    """A hand-made 'SyncNet': the video embedding of a window is its 5 frames' brightness, the
    audio embedding its 5 frames' log energy (MFCC c0 per frame), each standardised: in sync
    when the brightness follows the loudness."""

    crop, image_size, audio_scale, pad, embed_dim = (0.0, 1.0, 0.0, 1.0), (8, 8), 32768.0, "edge", 5

    @staticmethod
    def _z(x):
        x = x - x.mean(-1, keepdims=True)
        return x / (x.std(-1, keepdims=True) + 1e-6)

    def embed_video(self, frames):
        return self._z(frames.astype(np.float64).mean(axis=(2, 3, 4)))

    def embed_audio(self, patches):
        return self._z(patches[:, 0].reshape(len(patches), 5, 4).mean(-1))


def _loudness_clip(rng, t=75):
    """Frames whose brightness follows the per-frame loudness of noise audio."""
    level = rng.uniform(0.0, 1.0, t)
    audio = (rng.standard_normal((t, 640)) * np.exp(3 * level)[:, None] * 0.01).ravel()
    frames = np.broadcast_to(np.round(40 + 180 * level)[:, None, None, None],
                             (t, 8, 8, 3)).astype(np.uint8)
    return frames, audio.astype(np.float32)


def test_sync_scores_end_to_end_delay_and_shuffle():
    rng = np.random.default_rng(0)
    net = _EnergyNet()
    frames, audio = _loudness_clip(rng)
    s = sn.sync_scores(net, frames, audio)
    assert set(s) == {"lse_c", "lse_d", "offset", "curve"} and s["offset"] == 0
    for k in (3, -2):  # delaying the video by k frames moves the offset by k
        delayed = np.roll(frames, k, axis=0)
        assert sn.sync_scores(net, delayed, audio)["offset"] == k
    # Audio of another clip: the confidence drops, the distance grows.
    _, other = _loudness_clip(rng)
    shuffled = sn.sync_scores(net, frames, other)
    assert shuffled["lse_c"] < 0.5 * s["lse_c"] and shuffled["lse_d"] > s["lse_d"]
    with pytest.raises(ValueError, match="more than 5 frames"):
        sn.sync_scores(net, frames[:5], audio)


# -- training, held-out metrics, loading -----------------------------------------------------------

def test_load_syncnet_without_a_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/syncnet.py:synthtalk64"):
        load_syncnet(str(tmp_path / "nothing"))


@pytest.mark.slow
def test_train_then_heldout_then_load(syncnet_run, tmp_path):
    from vasa_jax.train.heldout import write_heldout

    wd, c, rows = copied_run(syncnet_run, tmp_path, "syncnet",
                             {"eval/offset_accuracy", "eval/lse_c", "eval/lse_d"})
    assert len(rows) == c.train.steps
    first, last = np.mean([r["loss"] for r in rows[:10]]), np.mean([r["loss"] for r in rows[-10:]])
    assert last < 0.75 * first, (first, last)
    # It learns timing, not only speech presence: the own clip's aligned patch beats its
    # shifted ones above chance (1 / (2 max_shift + 1)) on the training windows.
    k = 2 * c.loss.max_shift + 1
    assert np.mean([r["shift_acc"] for r in rows[-20:]]) > 1.5 / k

    with pytest.raises(FileNotFoundError, match="write_heldout"):
        load_syncnet(wd)  # held-out metrics and BatchNorm statistics must exist first
    metrics = write_heldout(wd, c)
    assert metrics["split"] == "test" and metrics["num_clips"] == 2
    with open(os.path.join(wd, sn.HELDOUT_FILE)) as f:
        json.load(f)
    net = load_syncnet(wd)
    assert {"offset_accuracy", "lse_c", "lse_d", "shuffled/lse_c", "window_offset_accuracy",
            "sync_auc", "chance_offset_accuracy"} <= set(net.heldout)
    # res64_tiny holds 8 training clips of 1 s and 2 held-out ones: far too little to generalise
    # to new faces and voices, so only the bookkeeping is checked here; the held-out accuracy
    # of the real instrument (configs/syncnet.py:synthtalk64) is in its syncnet_heldout.json.
    for key in ("offset_accuracy", "sync_auc", "lse_c", "lse_d", "shuffled/lse_c"):
        assert np.isfinite(net.heldout[key]), key
    assert net.heldout["chance_offset_accuracy"] == pytest.approx(3 / 31)
    frames = np.random.default_rng(1).integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)
    audio = np.random.default_rng(2).standard_normal(30 * 640).astype(np.float32) * 0.1
    s = sn.sync_scores(net, frames, audio)
    assert s["curve"].shape == (31,) and -15 <= s["offset"] <= 15
    assert jax.tree.leaves(net.state)  # weights are on this host


def test_instruments_build_in_a_fresh_interpreter_without_a_mesh():
    """`vasa-jax train syncnet` once died in Trainer's shape-first build: importing only the
    instruments left Flax's eager sharding on, which needs a mesh in context. Importing any part
    of vasa_jax switches it off (vasa_jax/__init__.py); checked where nothing else was imported."""
    import subprocess
    import sys

    code = ("from flax import nnx\n"
            "from vasa_jax.instruments import syncnet\n"
            "m = nnx.eval_shape(lambda: syncnet.make_syncnet(size='small', rngs=nnx.Rngs(0)))\n"
            "print('built', type(m).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "built SyncNetNetwork" in out.stdout
