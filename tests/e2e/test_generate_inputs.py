"""``vasa-jax generate`` and ``vasa-jax eval generate-set`` check every input before a model is
loaded: each bad input gives exit code 2, a message naming the cause and the fix, and leaves the
output folder as it was; unusual but usable inputs (grayscale, RGBA, palette, CMYK and
EXIF-rotated photos; 8 kHz, 44.1 kHz stereo, mp3, m4a, flac speech; paths with spaces and
non-ASCII characters) pass every check.

Validation needs the runs' stored configs but no weights, so the refusals run against
config-only runs (a checkpoint holding the training config and nothing else: had validation let
an input through, loading the weights would fail with another message). One real generation
(the session's tiny trained pair) replaces an existing output with --overwrite, streaming.
"""

import os
import re
import struct
import zlib

import av
import numpy as np
import pytest
import skimage.data
from PIL import Image

from data_pipeline.synthtalk.generate import generate_clip
from vasa_jax import cli
from vasa_jax.media import checks
from vasa_jax.media.audio import load_speech
from vasa_jax.media.face_crop import detect_faces
from vasa_jax.pipeline import TalkingFacePipeline

pytestmark = pytest.mark.reliability

RESOLUTION = 256  # of the config-only stage 1: the face-size check scales with it
ODD = "dossier élève ü/ph oto ñ"  # a folder and a file stem with spaces and non-ASCII


# -- inputs ------------------------------------------------------------------------------------
def _audio_file(path, x, rate, channels=1, codec=None):
    """Mono float ``x`` (already at ``rate``) written with ``channels`` identical channels."""
    codec = codec or {".flac": "flac", ".mp3": "libmp3lame", ".m4a": "aac"}.get(
        os.path.splitext(str(path))[1], "pcm_s16le")
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=rate)
        s.layout = layout
        planes = np.repeat(np.asarray(x, np.float32)[None], channels, axis=0)
        if codec == "pcm_s16le":
            pcm = np.round(np.clip(planes.T, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        elif codec == "flac":
            pcm = np.round(np.clip(planes.T, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        else:
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
        frame.sample_rate = rate
        for p in list(s.encode(frame)) + list(s.encode()):
            out.mux(p)


def _tone(seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    return 0.4 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))


def _png_header(path, width, height):
    """A PNG whose header says ``width`` x ``height`` (RGB) and whose pixel data is missing: it
    must be refused from the header, since decoding it would fail differently."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def _flac_claiming(path, seconds):
    """A 1-s FLAC whose STREAMINFO header claims ``seconds``: the length check must come from
    the header (decoding it would find 1 s)."""
    _audio_file(path, _tone(1, 16000), 16000, codec="flac")
    data = bytearray(path.read_bytes())
    word = struct.unpack(">Q", bytes(data[18:26]))[0]  # rate, channels, bits, total samples
    word = (word & ~((1 << 36) - 1)) | int(seconds * 16000)
    data[18:26] = struct.pack(">Q", word)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Every photo and speech file the cases use."""
    d = tmp_path_factory.mktemp("media")
    face = generate_clip(0, 950, 1, 1, 256)["frames"][0]  # a held-out SynthTalk identity
    speech = generate_clip(0, 950, 1, 75, 32)["audio"][: 53 * 640 + 300]  # 2.1 s
    Image.fromarray(face).save(d / "face.png")
    _audio_file(d / "speech.wav", speech, 16000)
    astro = skimage.data.astronaut()
    Image.fromarray(astro).save(d / "astronaut.png")
    for mode in ("L", "RGBA", "P"):
        Image.fromarray(astro).convert(mode).save(d / f"astronaut_{mode}.png")
    alpha = np.full(astro.shape[:2], 255, np.uint8)
    alpha[:, 400:] = 0  # a cut-out: transparent background on the right
    Image.fromarray(np.dstack([astro, alpha])).save(d / "astronaut_alpha.png")
    Image.fromarray(astro).convert("CMYK").save(d / "astronaut_cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees: "rotate 90 clockwise to display"
    Image.fromarray(np.rot90(astro).copy()).save(d / "astronaut_exif.jpg", exif=exif)
    half = astro[:300, 100:400]
    Image.fromarray(np.concatenate([half, half], axis=1)).save(d / "two.png")
    Image.fromarray(astro).resize((192, 192)).save(d / "tiny.png")  # a ~37 px face
    Image.fromarray(skimage.data.coffee()).save(d / "coffee.jpg")
    Image.fromarray((astro[..., 0].astype(np.uint16) * 257)).save(d / "depth16.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    jpg = (d / "astronaut_cmyk.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(jpg[: len(jpg) // 3])
    _png_header(d / "huge.png", 10_000, 10_000)  # 100 MP: Pillow alone would only warn
    _png_header(d / "bomb.png", 20_000, 20_000)  # 400 MP: Pillow alone raises its own error
    _audio_file(d / "silent.wav", np.zeros(16000), 16000)
    import wave

    with wave.open(str(d / "empty.wav"), "wb") as f:  # a valid header, no samples
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
    (d / "junk.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    from vasa_jax.media.video_io import write_mp4

    write_mp4(d / "mute.mp4", np.zeros((5, 32, 32, 3), np.uint8))
    write_mp4(d / "talk.mp4", np.zeros((5, 32, 32, 3), np.uint8), _tone(0.2, 16000))
    _flac_claiming(d / "ten_hours.flac", 36_000)
    x8 = _tone(2, 8000)
    _audio_file(d / "speech_8k.wav", x8, 8000)
    _audio_file(d / "speech_44k_stereo.wav", _tone(2, 44100), 44100, channels=2)
    _audio_file(d / "speech.mp3", _tone(2, 48000), 48000, channels=2)
    _audio_file(d / "speech.m4a", _tone(2, 44100), 44100, channels=2)
    _audio_file(d / "speech.flac", _tone(2, 22050), 22050, channels=2)
    odd = d / ODD
    odd.parent.mkdir()
    Image.fromarray(face).save(f"{odd}.png")
    _audio_file(f"{odd}.wav", speech, 16000)
    return d


def _config_run(path, config):
    """A run folder whose only checkpoint holds ``config`` (no weights)."""
    import json

    import orbax.checkpoint as ocp
    from etils import epath

    stored = json.loads(json.dumps(config.to_dict(), default=str))  # as the trainer stores it
    manager = ocp.CheckpointManager(epath.Path(path) / "checkpoints",
                                    options=ocp.CheckpointManagerOptions(create=True),
                                    item_handlers={"config": ocp.JsonCheckpointHandler()})
    manager.save(1, args=ocp.args.Composite(config=ocp.args.JsonSave(stored)))
    manager.wait_until_finished()
    manager.close()
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Config-only runs: "latent" (stage 1, ``test`` at 256 px), "motion" (stage 2 on its
    latents), "mismatch" (stage 2 for a stage 1 with another z_dyn size)."""
    from configs import latent, motion

    d = tmp_path_factory.mktemp("runs")
    lc = latent.get_config("test")
    lc.model.resolution = RESOLUTION
    return {"latent": _config_run(d / "latent", lc),
            "motion": _config_run(d / "motion", motion.get_config("test_latents")),
            "mismatch": _config_run(d / "mismatch", motion.get_config("synthtalk_latents"))}


@pytest.fixture(scope="module")
def real_set(tmp_path_factory):
    """A one-clip real clip set for ``eval generate-set``."""
    from vasa_jax.eval.clip_set import write_clip

    d = tmp_path_factory.mktemp("real")
    clip = generate_clip(0, 951, 0, 25, 64)
    write_clip(str(d), "c0", clip["frames"], clip["audio"])
    return str(d)


# -- the cases ---------------------------------------------------------------------------------
class Case:
    """The command line of one case; ``out`` is the output folder (a case may prepare it)."""

    def __init__(self, media, runs, real, out):
        self.media, self.runs, self.real, self.out = media, runs, real, out

    def gen(self, *extra, image="face.png", audio="speech.wav", out="talk.mp4",
            latent=None, motion=None):
        return ["generate", "--image", str(self.media / image),
                "--audio", str(self.media / audio), "--out", str(self.out / out),
                "--latent-workdir", latent or self.runs["latent"],
                "--motion-workdir", motion or self.runs["motion"], "--steps", "2", *extra]

    def gen_set(self, *extra, real=None, out=None, latent=None):
        return ["eval", "generate-set", "--real", real or self.real,
                "--out", str(out or self.out / "clips"),
                "--latent-workdir", latent or self.runs["latent"],
                "--motion-workdir", self.runs["motion"], "--steps", "2", *extra]


def _unwritable(c):
    """A folder the output cannot go into: read-only for a normal user; root writes into any
    folder, so for root the "folder" is a regular file."""
    if os.geteuid() == 0:
        (c.out / "plain_file").write_text("x")
        return c.gen(out="plain_file/sub/talk.mp4")
    locked = c.out / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return c.gen(out="locked/talk.mp4")


def _existing(c):
    (c.out / "talk.mp4").write_bytes(b"an earlier video")
    return c.gen()


def _existing_clip(c):
    (c.out / "clips").mkdir()
    (c.out / "clips" / "c0.mp4").write_bytes(b"an earlier clip")
    return c.gen_set()


def _under_a_file(c):
    (c.out / "f").write_text("x")
    return c.gen(out="f/a/b.mp4")


def _out_is_folder(c):
    (c.out / "d.mp4").mkdir()
    return c.gen(out="d.mp4")


def _out_is_speech(c):
    (c.out / "talk.mp4").write_bytes((c.media / "talk.mp4").read_bytes())  # has a sound track
    return c.gen("--overwrite", audio=str(c.out / "talk.mp4"))


def _file_run(c):
    (c.out / "run.txt").write_text("not a run")
    return c.gen(latent=str(c.out / "run.txt"))


def _empty_run(c):
    (c.out / "empty_run").mkdir()
    return c.gen(latent=str(c.out / "empty_run"))


def _set_out_file(c):
    (c.out / "clips").write_text("x")
    return c.gen_set()


BAD = {
    # the photo
    "photo missing": (lambda c: c.gen(image="missing.png"), r"does not exist"),
    "photo corrupt": (lambda c: c.gen(image="broken.png"), r"corrupt|not an image"),
    "photo truncated": (lambda c: c.gen(image="cut.jpg"), r"corrupt or truncated"),
    "photo not an image": (lambda c: c.gen(image="speech.wav"), r"not an image"),
    "no face": (lambda c: c.gen(image="coffee.jpg"), r"No face found"),
    "two faces": (lambda c: c.gen(image="two.png"), r"Found 2 faces.*--face-index"),
    "face index out of range": (lambda c: c.gen("--face-index", "2", image="two.png"),
                                r"--face-index 2 is out of range"),
    "negative face index": (lambda c: c.gen("--face-index", "-1"), r"numbered from 0"),
    "tiny face": (lambda c: c.gen(image="tiny.png"), r"too small.*higher-resolution"),
    "16-bit photo": (lambda c: c.gen(image="depth16.png"), r"mode 'I;16'.*8-bit RGB"),
    "huge photo 100 MP": (lambda c: c.gen(image="huge.png"),
                          r"10000x10000 \(100 MP\), over the limit of 50 megapixels; downscale"),
    "huge photo 400 MP": (lambda c: c.gen(image="bomb.png"), r"over the limit of 50 megapixels"),
    # the speech
    "speech missing": (lambda c: c.gen(audio="missing.wav"), r"does not exist"),
    "speech empty": (lambda c: c.gen(audio="empty.wav"), r"no samples"),
    "speech corrupt": (lambda c: c.gen(audio="junk.mp3"), r"corrupt or not in a format"),
    "speech silent": (lambda c: c.gen(audio="silent.wav"), r"is silent"),
    "speech not audio": (lambda c: c.gen(audio="coffee.jpg"), r"no audio stream"),
    "video without audio": (lambda c: c.gen(audio="mute.mp4"), r"no audio stream"),
    "speech too long (header)": (lambda c: c.gen(audio="ten_hours.flac"),
                                 r"36000\.0 s long, over the offline limit of 300 s.*--stream"),
    "speech over --max-seconds": (lambda c: c.gen("--max-seconds", "1"),
                                  r"over the offline limit of 1 s"),
    # the options
    "odd --size": (lambda c: c.gen("--size", "63"), r"--size 63: .*even number of pixels"),
    "--size below 32": (lambda c: c.gen("--size", "16"), r"from 32 to 4096"),
    "--size 0": (lambda c: c.gen("--size", "0"), r"--size 0: "),
    "--out not mp4": (lambda c: c.gen(out="talk.mov"), r"end the name in \.mp4"),
    "--c2pa-cert alone": (lambda c: c.gen("--c2pa-cert", str(c.media / "face.png")),
                          r"--c2pa-cert and --c2pa-key go together"),
    "--steps 0": (lambda c: c.gen("--steps", "0"), r"--steps 0: must be greater than 0"),
    "--max-seconds 0": (lambda c: c.gen("--max-seconds", "0"), r"greater than 0"),
    "--emotion unknown": (lambda c: c.gen("--emotion", "angry"), r"--emotion 'angry': use one"),
    "--cfg malformed": (lambda c: c.gen("--cfg", "audio"), r"CONDITION=SCALE"),
    # the output
    "unwritable folder": (_unwritable, r"not writable|is a file, not a folder"),
    "output under a file": (_under_a_file, r"/f' is a file, not a folder"),
    "output is a folder": (_out_is_folder, r"is a folder; give a file name"),
    "existing output": (_existing, r"already exists; pass --overwrite"),
    "output is the speech": (_out_is_speech, r"is the --audio file"),
    # the runs
    "workdir missing": (lambda c: c.gen(latent=str(c.out / "nowhere")), r"does not exist"),
    "workdir is a file": (_file_run, r"is a file; pass the folder of a trained run"),
    "workdir without checkpoint": (_empty_run, r"holds no checkpoint.*vasa-jax train latent"),
    "workdirs swapped": (lambda c: c.gen(latent=c.runs["motion"], motion=c.runs["latent"]),
                         r"holds a 'motion' run \(pass it as --motion-workdir\)"),
    "runs do not fit": (lambda c: c.gen(motion=c.runs["mismatch"]),
                        r"generates 39-d motion.*decodes 13-d"),
    # eval generate-set
    "set: real set missing": (lambda c: c.gen_set(real=str(c.out / "none")), r"does not exist"),
    "set: --out is a file": (_set_out_file, r"is a file; give a folder"),
    "set: existing clip": (_existing_clip, r"1 of the files to write exist already.*--overwrite"),
    "set: workdir missing": (lambda c: c.gen_set(latent=str(c.out / "nowhere")),
                             r"--latent-workdir .* does not exist"),
    "set: --steps 0": (lambda c: c.gen_set("--steps", "0"), r"greater than 0"),
    "set: --cfg malformed": (lambda c: c.gen_set("--cfg", "pose=1"), r"conditions are audio"),
}


def _snapshot(folder):
    """Every path under ``folder`` with its size, mtime and permission bits."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


class _ReachedModels(Exception):
    """Raised instead of loading the models: every check passed."""


@pytest.fixture
def no_models(monkeypatch, tmp_path):
    """Loading the models raises ``_ReachedModels``; the C2PA folder is the test's own."""
    def refuse(cls, *a, **k):
        raise _ReachedModels
    monkeypatch.setattr(TalkingFacePipeline, "from_checkpoints", classmethod(refuse))
    monkeypatch.setenv("VASA_JAX_C2PA_DIR", str(tmp_path / "c2pa"))


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_fails_early_clearly_and_writes_nothing(name, media, runs, real_set, tmp_path,
                                                          capsys, no_models):
    out = tmp_path / "out"
    out.mkdir()
    build, match = BAD[name]
    argv = build(Case(media, runs, real_set, out))
    before = _snapshot(out)
    try:
        code = cli.main(argv)
        after = _snapshot(out)
    finally:
        if (out / "locked").exists():
            (out / "locked").chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vasa-jax: error: ") and re.search(match, err), err
    assert after == before
    assert not (tmp_path / "c2pa").exists()  # not even the development certificate


ACCEPTED = {
    "grayscale photo": dict(image="astronaut_L.png"),
    "RGBA photo": dict(image="astronaut_RGBA.png"),
    "transparent photo": dict(image="astronaut_alpha.png"),
    "palette photo": dict(image="astronaut_P.png"),
    "CMYK photo": dict(image="astronaut_cmyk.jpg"),
    "EXIF-rotated photo": dict(image="astronaut_exif.jpg"),
    "8 kHz speech": dict(audio="speech_8k.wav"),
    "44.1 kHz stereo speech": dict(audio="speech_44k_stereo.wav"),
    "mp3 speech": dict(audio="speech.mp3"),
    "m4a speech": dict(audio="speech.m4a"),
    "flac speech": dict(audio="speech.flac"),
    "ten hours, streaming": dict(audio="ten_hours.flac", extra=("--stream",)),
    "spaces and non-ASCII": dict(image=f"{ODD}.png", audio=f"{ODD}.wav", out=f"{ODD} ü.mp4"),
    "existing output, --overwrite": dict(extra=("--overwrite",), existing=True),
    "set: existing clip, --overwrite": dict(generate_set=True),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_unusual_inputs_pass_every_check(name, media, runs, real_set, tmp_path, no_models):
    case = ACCEPTED[name]
    out = tmp_path / "out"
    out.mkdir()
    c = Case(media, runs, real_set, out)
    if case.get("generate_set"):
        _existing_clip(c)
        argv = c.gen_set("--overwrite")
    else:
        if case.get("existing"):
            _existing(c)
        argv = c.gen(*case.get("extra", ()), image=case.get("image", "face.png"),
                     audio=case.get("audio", "speech.wav"), out=case.get("out", "talk.mp4"))
    before = _snapshot(out)
    with pytest.raises(_ReachedModels):
        cli.main(argv)
    assert _snapshot(out) == before
    if "photo" in name:  # the face is found, and the crop is upright like the RGB photo's
        crop = checks.check_photo(media / case["image"], RESOLUTION)
        upright = checks.check_photo(media / "astronaut.png", RESOLUTION)
        (face,) = detect_faces(crop)
        (left, right) = face.eyes
        assert abs(face.roll_degrees) < 15 and max(left[1], right[1]) < face.center[1]
        gray = lambda x: x.astype(float) @ [0.299, 0.587, 0.114]  # noqa: E731
        assert np.abs(gray(crop) - gray(upright)).mean() < 30  # turned 90 degrees: 77
    if "speech" in name and "hours" not in name:
        assert abs(len(load_speech(media / case["audio"])) - 32000) < 2100


def test_overwrite_replaces_an_output_with_a_streamed_video(generation_workdirs, media,
                                                            tmp_path, capsys, monkeypatch):
    """The one real generation: streaming, into a path with spaces and non-ASCII characters,
    over an existing file: refused without --overwrite, replaced with it."""
    from vasa_jax.media.video_io import read_metadata, read_mp4
    from vasa_jax.safety.provenance import read_manifest
    from vasa_jax.safety.publish import SAFETY_TAG

    monkeypatch.setenv("VASA_JAX_C2PA_DIR", str(tmp_path / "c2pa"))
    out = tmp_path / "sortie vidéo" / "parle ü.mp4"
    out.parent.mkdir()
    out.write_bytes(b"an earlier video")
    latent, motion = generation_workdirs
    argv = ["generate", "--image", f"{media / ODD}.png", "--audio", f"{media / ODD}.wav",
            "--out", str(out), "--latent-workdir", latent, "--motion-workdir", motion,
            "--steps", "2", "--size", "64", "--stream"]
    assert cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier video"
    assert cli.main(argv + ["--overwrite"]) == 0
    frames, audio, fps, rate = read_mp4(out)
    n = -(-(53 * 640 + 300) // 640)  # 54 frames: the audio rounded up to whole frames
    assert frames.shape == (n, 64, 64, 3) and fps == 25 and rate == 16000
    assert abs(len(audio) - (53 * 640 + 300)) <= 2048 and np.abs(audio).max() > 0.05
    assert read_manifest(out).status == "valid"
    assert read_metadata(out)[SAFETY_TAG] == "watermark=on; c2pa=on"
    assert sorted(os.listdir(out.parent)) == [out.name]  # no temporary file left
