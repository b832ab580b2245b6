"""``vasa-jax generate`` (photo + speech -> a marked mp4 with sound) and ``vasa-jax verify``
(a video's watermark, C2PA manifest and safety tags)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from vasa_jax.cli.common import UserError, user_errors
from vasa_jax.media.checks import MAX_SECONDS


def parse_controls(defaults, *, cfg: Sequence[str] = (), emotion: str | None = None,
                   gaze: Sequence[float] | None = None, distance: float | None = None,
                   steps: int | None = None, fast: bool = False, sampler: str | None = None,
                   seed: int = 0):
    """The pipeline's ``Controls`` from the command line's options (``cfg``: CONDITION=SCALE
    strings; ``emotion``: a name or its index), the model's ``defaults`` where not given."""
    from vasa_jax.pipeline import EMOTIONS, Controls

    scales = dict(defaults.cfg)
    for item in cfg:
        name, _, value = item.partition("=")
        try:
            scales[name] = float(value)
        except ValueError:
            raise UserError(f"--cfg {item!r}: expected CONDITION=SCALE, e.g. audio=0.5.") from None
        if name not in ("audio", "gaze", "distance", "emotion"):
            raise UserError(f"--cfg {item!r}: conditions are audio, gaze, distance, emotion.")
    if emotion is not None:
        names = {name: i for i, name in enumerate(EMOTIONS)} | {str(i): i for i in
                                                                range(len(EMOTIONS))}
        if emotion not in names:
            raise UserError(f"--emotion {emotion!r}: use one of {', '.join(EMOTIONS)} (or "
                            f"0-{len(EMOTIONS) - 1}).")
        emotion = names[emotion]
    return Controls(gaze=tuple(gaze) if gaze else None, distance=distance, emotion=emotion,
                    cfg=tuple(sorted(scales.items())),
                    steps=10 if fast else (steps or defaults.steps),
                    sampler=sampler or defaults.sampler, seed=seed)


def _check(args):
    """Every check that needs no model, cheapest first, before anything is loaded or written:
    the options, the output path, the C2PA signer's files, the two runs (their configs), the
    photo and its face (at the model's resolution), the speech (its header's duration, then its
    samples), the development signer and the watermark key (both made on first use). Returns
    (the face crop, or the photo with --no-detect; the speech, None when streaming (it is
    decoded again piece by piece); its number of 16 kHz samples; the C2PA signer; the
    watermark key, None with --no-watermark)."""
    from vasa_jax.media import checks
    from vasa_jax.media.audio import check_speech, load_speech
    from vasa_jax.pipeline import Controls
    from vasa_jax.safety import keys, provenance

    if bool(args.c2pa_cert) != bool(args.c2pa_key):
        raise UserError("--c2pa-cert and --c2pa-key go together (certificate chain PEM and "
                        "its private key PEM).")
    checks.check_size(args.size)
    checks.check_positive(args.steps, "--steps")
    checks.check_positive(args.max_seconds, "--max-seconds")
    parse_controls(Controls(), cfg=args.cfg, emotion=args.emotion)  # the syntax (defaults later)
    out = checks.check_output_file(args.out, overwrite=args.overwrite)
    for flag, path in (("--image", args.image), ("--audio", args.audio)):
        if os.path.exists(path) and os.path.exists(out) and os.path.samefile(path, out):
            raise UserError(f"--out {out!r} is the {flag} file; choose another output name.")
    identity = None
    if args.c2pa_cert and not args.no_c2pa:
        identity = provenance.SigningIdentity.from_files(args.c2pa_cert, args.c2pa_key)
    latent_config, _ = checks.check_runs(args.latent_workdir, args.motion_workdir)
    photo = checks.check_photo(args.image, int(latent_config.model.resolution),
                               face_index=args.face_index, detect=not args.no_detect)
    if args.stream:
        audio, samples = None, check_speech(args.audio)
    else:
        audio = load_speech(args.audio, max_seconds=args.max_seconds)
        samples = audio.size
    if identity is None and not args.no_c2pa:
        identity = provenance.ensure_dev_certificate()
    key = None if args.no_watermark else keys.watermark_key(args.watermark_key_file)
    return photo, audio, samples, identity, key


def _stream_to(writer, pipe, source, path: str, controls, size: int, bar) -> None:
    """Streaming: the speech decoded piece by piece into ``pipe.stream``, each window's frames
    (resized to ``size``) written with the speech they belong to as soon as they come, so
    memory does not grow with the audio's length."""
    from vasa_jax.constants import SAMPLES_PER_FRAME
    from vasa_jax.media.audio import iter_audio
    from vasa_jax.media.video_io import resize_frames

    pending = [np.zeros(0, np.float32)]  # speech the pipeline has taken, not written yet

    def pieces():
        for piece in iter_audio(path):
            piece = np.clip(piece, -1.0, 1.0)
            pending.append(piece)
            yield piece

    for part in pipe.stream(source, pieces(), controls):
        audio = np.concatenate(pending)
        n = len(part) * SAMPLES_PER_FRAME
        pending[:] = [audio[n:]]
        writer.write(resize_frames(part, size), audio[:n])
        bar.update(1)
    writer.write(None, np.concatenate(pending))


def generate(args) -> str:
    """Photo + speech -> a watermarked, C2PA-signed mp4 with sound. Every input is checked
    before a model is loaded; an existing output is replaced only with --overwrite; the file
    appears whole or not at all. With --stream, frames are written as they are generated."""
    from tqdm import tqdm

    from vasa_jax.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
    from vasa_jax.media.errors import InputError
    from vasa_jax.media.video_io import resize_frames
    from vasa_jax.pipeline import TalkingFacePipeline
    from vasa_jax.safety import provenance
    from vasa_jax.safety.publish import MIN_OUTPUT_SIZE, marked_video_writer, write_marked_video

    with user_errors(InputError, provenance.ProvenanceError, FileNotFoundError, ValueError):
        photo, audio, samples, identity, key = _check(args)
        pipe = TalkingFacePipeline.from_checkpoints(args.latent_workdir, args.motion_workdir,
                                                    max_seconds=args.max_seconds)
        controls = parse_controls(pipe.defaults, cfg=args.cfg, emotion=args.emotion,
                                  gaze=args.gaze, distance=args.distance, steps=args.steps,
                                  fast=args.fast, sampler=args.sampler, seed=args.seed)
        source = pipe.prepare_source(photo, detect=False)
    generation = {"model": "vasa_jax", "latent_workdir": args.latent_workdir,
                  "motion_workdir": args.motion_workdir, "seed": controls.seed,
                  "steps": controls.steps, "sampler": controls.sampler,
                  "cfg": dict(controls.cfg), "gaze": controls.gaze,
                  "distance": controls.distance, "emotion": controls.emotion}
    size = args.size or max(MIN_OUTPUT_SIZE, pipe.resolution)
    marks = dict(watermark_on=not args.no_watermark, c2pa_on=not args.no_c2pa,
                 identity=identity, generation=generation, watermark_key=key)
    frames_total = -(-samples // SAMPLES_PER_FRAME)
    windows = -(-frames_total // pipe.window)
    print(f"Generating {samples / SAMPLE_RATE:.1f} s ({frames_total} frames, {windows} "
          f"windows of {pipe.window}) at {pipe.resolution} px, {controls.steps} steps, "
          f"{'streaming' if args.stream else 'offline'}")
    with user_errors(InputError, provenance.ProvenanceError), \
            tqdm(total=windows, unit="window") as bar:
        if args.stream:
            with marked_video_writer(args.out, size, size, **marks) as writer:
                _stream_to(writer, pipe, source, args.audio, controls, size, bar)
        else:
            frames = pipe.generate(source, audio, controls,
                                   progress=lambda d, n: bar.update(d - bar.n)).frames
            write_marked_video(args.out, resize_frames(frames, size), audio, **marks)
    done = [m for m, off in (("watermark", args.no_watermark), ("C2PA manifest", args.no_c2pa))
            if not off]
    print(f"Wrote {args.out} ({', '.join(done) or 'NO safety marks: recorded in its tags'}).")
    return args.out


def verify(args):
    """Print a video's watermark, C2PA manifest and safety tags; returns the report."""
    from vasa_jax.safety import keys
    from vasa_jax.safety.publish import verify_video

    if not os.path.isfile(args.video):
        raise UserError(f"{args.video!r} does not exist.")
    with user_errors(keys.KeyFileError):
        key = keys.watermark_key(args.watermark_key_file, create=False)
    with user_errors(ValueError, prefix=f"Cannot read {args.video!r} as a video: "):
        report = verify_video(args.video, watermark_key=key)
    print("\n".join(report.lines()))
    return report


KEY_HELP = ("the secret watermark key (hex, mode 600; default $VASA_JAX_WATERMARK_KEY_FILE, "
            "else watermark.key in the private folder of the development C2PA certificate, "
            "made on first use)")


def add_parser(sub) -> None:
    """``generate`` and ``verify``."""
    g = sub.add_parser("generate", help="a talking-face mp4 (with sound) from a portrait photo "
                       "and a speech file; watermarked and C2PA-signed by default")
    g.add_argument("--image", required=True, help="portrait photo (JPEG, PNG, ...)")
    g.add_argument("--audio", required=True, help="speech (wav, mp3, m4a, flac; any rate)")
    g.add_argument("--out", required=True, help="output .mp4")
    g.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (otherwise an existing file is refused)")
    g.add_argument("--latent-workdir", required=True, help="trained stage 1 (local or gs://)")
    g.add_argument("--motion-workdir", required=True,
                   help="stage 2 trained on that stage 1's latents (local or gs://)")
    g.add_argument("--gaze", type=float, nargs=2, metavar=("THETA", "PHI"),
                   help="main gaze direction in radians (default: the model's choice)")
    g.add_argument("--distance", type=float, help="head-to-camera distance (normalised)")
    g.add_argument("--emotion", help="neutral, happy, sad, surprised (or 0-3)")
    g.add_argument("--cfg", action="append", default=[], metavar="CONDITION=SCALE",
                   help="guidance scale, e.g. --cfg audio=0.5 --cfg gaze=1 (repeatable)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default 50)")
    g.add_argument("--fast", action="store_true", help="10 denoising steps")
    g.add_argument("--sampler", choices=("ddim", "ddpm"), default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--face-index", type=int, default=None,
                   help="which face when the photo has several (0 = leftmost)")
    g.add_argument("--no-detect", action="store_true",
                   help="the photo is already a training-framed face crop")
    g.add_argument("--stream", action="store_true",
                   help="generate window by window as audio arrives, writing each window's "
                        "frames as they come (no length limit; memory does not grow with it)")
    g.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                   help="offline length limit (checked from the audio file's header first)")
    g.add_argument("--size", type=int, default=None,
                   help="output side in px (default: the model's, at least 256, where the "
                        "watermark survives re-encoding and resizing)")
    g.add_argument("--no-watermark", action="store_true",
                   help="do not watermark the frames (recorded in the file's tags)")
    g.add_argument("--no-c2pa", action="store_true",
                   help="do not sign a C2PA manifest (recorded in the file's tags)")
    g.add_argument("--c2pa-cert", help="your signing certificate chain (PEM; default: a local "
                   "development certificate)")
    g.add_argument("--c2pa-key", help="the private key of --c2pa-cert (PEM; mode 600)")
    g.add_argument("--watermark-key-file", help=KEY_HELP)
    g.set_defaults(func=generate)

    v = sub.add_parser("verify", help="report a video's watermark, C2PA manifest and safety "
                       "tags")
    v.add_argument("video")
    v.add_argument("--watermark-key-file", help=KEY_HELP)
    v.set_defaults(func=verify)
