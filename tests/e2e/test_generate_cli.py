"""``vasa-jax generate`` / ``verify``: a real mp4 with sound from tiny trained checkpoints, the
safety marks on by default and recorded when off. (Bad inputs: test_generate_inputs.py.)"""

import os

import av
import numpy as np
import pytest
from PIL import Image

from data_pipeline.synthtalk.generate import generate_clip
from vasa_jax import cli
from vasa_jax.media.video_io import read_metadata, read_mp4
from vasa_jax.safety.provenance import TRAINED_ALGORITHMIC_MEDIA, read_manifest
from vasa_jax.safety.publish import SAFETY_TAG


def _write_audio(path, audio, rate, channels=2):
    """``audio`` (S,) at 16 kHz written at ``rate`` with ``channels`` (a format the pipeline
    must convert)."""
    import librosa

    x = librosa.resample(audio.astype(np.float32), orig_sr=16000, target_sr=rate)
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        s = out.add_stream("flac" if str(path).endswith(".flac") else "pcm_s16le", rate=rate)
        s.layout = "stereo" if channels == 2 else "mono"
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm, channels)[None], format="s16",
                                           layout=s.layout)
        frame.sample_rate = rate
        for p in list(s.encode(frame)) + list(s.encode()):
            out.mux(p)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    clip = generate_clip(0, 950, 1, 75, 256)  # a held-out identity
    Image.fromarray(clip["frames"][0]).save(d / "face.png")
    _write_audio(d / "speech.flac", clip["audio"][: 53 * 640 + 300], 22050)
    return d


def _args(gen, inputs, out, *extra, image="face.png", audio="speech.flac"):
    latent, motion = gen
    return ["generate", "--image", str(inputs / image), "--audio", str(inputs / audio),
            "--out", str(out), "--latent-workdir", latent, "--motion-workdir", motion,
            "--steps", "2", *extra]


def test_generate_writes_marked_mp4_with_sound_and_verify_reports_it(
        generation_workdirs, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VASA_JAX_C2PA_DIR", str(tmp_path / "c2pa"))
    out = tmp_path / "out" / "talk.mp4"
    assert cli.main(_args(generation_workdirs, inputs, out, "--emotion", "happy",
                          "--gaze", "0.1", "-0.1", "--cfg", "audio=1")) == 0
    frames, audio, fps, rate = read_mp4(out)
    n = -(-(53 * 640 + 300) // 640)  # 54 frames: the audio rounded up to whole frames
    assert frames.shape == (n, 256, 256, 3) and fps == 25 and rate == 16000  # upscaled
    assert abs(len(audio) - (53 * 640 + 300)) <= 2048 and np.abs(audio).max() > 0.05
    with av.open(str(out)) as f:
        assert f.streams.video[0].codec_context.name == "h264"
        assert f.streams.audio[0].codec_context.name == "aac"
    report = read_manifest(out)
    assert report.status == "valid" and report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert report.generation["seed"] == 0 and report.generation["watermark"] is True
    assert report.generation["emotion"] == 1
    assert read_metadata(out)[SAFETY_TAG] == "watermark=on; c2pa=on"
    capsys.readouterr()
    assert cli.main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "C2PA manifest: VALID" in text and "watermark=on; c2pa=on" in text
    assert "watermark: DETECTED" in text
    assert not [p for p in os.listdir(out.parent) if p.startswith(".tmp-")]

    # Turning the marks off needs flags and is recorded; verify then finds neither.
    bare = tmp_path / "bare.mp4"
    assert cli.main(_args(generation_workdirs, inputs, bare, "--no-watermark", "--no-c2pa",
                          "--stream", "--size", "64")) == 0
    assert read_metadata(bare)[SAFETY_TAG] == "watermark=off; c2pa=off"
    assert read_manifest(bare).status == "absent"
    assert read_mp4(bare)[0].shape == (n, 64, 64, 3)  # --size 64: the model's own
    capsys.readouterr()
    cli.main(["verify", str(bare)])
    text = capsys.readouterr().out
    assert "watermark: not detected" in text and "C2PA manifest: absent" in text


@pytest.mark.slow
def test_main_job_runs_the_whole_pipeline(tmp_path, capsys, monkeypatch):
    """The README's main job with test-sized variants: SynthTalk -> stage 1 -> latents ->
    stage 2 -> a held-out identity speaking held-out audio, side by side with the truth.
    Stage 1 takes the main job's design: motion from the shipped frozen estimator, the sharp
    2-D and pixel paths."""
    monkeypatch.setenv("VASA_JAX_C2PA_DIR", str(tmp_path / "c2pa"))
    wd = tmp_path / "qs"
    assert cli.main(["quickstart", "--workdir", str(wd), "--synthtalk-config", "res64_tiny",
                     "--workers", "1", "--latent-variant", "test",
                     "--motion-variant", "test_latents", "--set-motion", "sample.steps=3",
                     "--set-latent", "model.motion_source=estimator",
                     "--set-latent", "model.estimator_workdir=package:estimator_synthtalk64",
                     "--set-latent", "model.skip_channels=4",
                     "--set-latent", "model.pixel_warp=True",
                     "--set-latent", "num_devices=1", "--set-motion", "num_devices=1",
                     # the pipeline, not learning, is under test here (warmup is 5 steps)
                     "--set-latent", "train.steps=6", "--set-motion", "train.steps=6"]) == 0
    out = capsys.readouterr().out
    assert "C2PA manifest: VALID" in out and "watermark: DETECTED" in out
    gen, _, _, _ = read_mp4(wd / "demo" / "generated.mp4")
    side, audio, _, _ = read_mp4(wd / "demo" / "side_by_side.mp4")
    assert gen.shape == (25, 256, 256, 3) and side.shape == (25, 256, 512, 3)
    assert audio is not None and np.abs(audio).max() > 0.01
    assert read_manifest(wd / "demo" / "side_by_side.mp4").status == "valid"
