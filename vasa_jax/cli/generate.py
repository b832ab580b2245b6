"""``vasa-jax generate`` (photo + speech -> a marked mp4 with sound) and ``vasa-jax verify``
(a video's watermark, C2PA manifest and safety tags)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from vasa_jax.cli.common import UserError, user_errors


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


def _frames(pipe, source, audio, controls, stream: bool) -> np.ndarray:
    """Generate with a progress bar over windows: at once, or as 200-ms audio pieces arrive."""
    from tqdm import tqdm

    from vasa_jax.constants import SAMPLES_PER_FRAME

    frames_total = -(-len(audio) // SAMPLES_PER_FRAME)
    windows = -(-frames_total // pipe.window)
    print(f"Generating {frames_total / 25:.1f} s ({frames_total} frames, {windows} windows of "
          f"{pipe.window}) at {pipe.resolution} px, {controls.steps} steps, "
          f"{'streaming' if stream else 'offline'}")
    with tqdm(total=windows, unit="window") as bar:
        if not stream:
            return pipe.generate(source, audio, controls,
                                 progress=lambda d, n: bar.update(d - bar.n)).frames
        chunk = 16000 // 5  # 200 ms pieces, as a live source would deliver
        pieces = (audio[i:i + chunk] for i in range(0, len(audio), chunk))
        parts = []
        for part in pipe.stream(source, pieces, controls):
            parts.append(part)
            bar.update(1)
        return np.concatenate(parts)


def generate(args) -> str:
    """Photo + speech -> a watermarked, C2PA-signed mp4 with sound (nothing written on error)."""
    from vasa_jax.media.audio import load_speech
    from vasa_jax.media.errors import InputError
    from vasa_jax.media.video_io import resize_frames
    from vasa_jax.pipeline import TalkingFacePipeline
    from vasa_jax.safety import provenance
    from vasa_jax.safety.publish import MIN_OUTPUT_SIZE, write_marked_video

    if not args.out.lower().endswith(".mp4"):
        raise UserError(f"--out {args.out!r}: the output is an mp4 file; end the name in .mp4.")
    if bool(args.c2pa_cert) != bool(args.c2pa_key):
        raise UserError("--c2pa-cert and --c2pa-key go together (certificate chain PEM and "
                        "its private key PEM).")
    identity = None
    with user_errors(InputError, provenance.ProvenanceError, FileNotFoundError, ValueError):
        if args.c2pa_cert and not args.no_c2pa:
            identity = provenance.SigningIdentity.from_files(args.c2pa_cert, args.c2pa_key)
        audio = load_speech(args.audio, max_seconds=None if args.stream else args.max_seconds)
        pipe = TalkingFacePipeline.from_checkpoints(args.latent_workdir, args.motion_workdir,
                                                    max_seconds=args.max_seconds)
        controls = parse_controls(pipe.defaults, cfg=args.cfg, emotion=args.emotion,
                                  gaze=args.gaze, distance=args.distance, steps=args.steps,
                                  fast=args.fast, sampler=args.sampler, seed=args.seed)
        source = pipe.prepare_source(args.image, face_index=args.face_index,
                                     detect=not args.no_detect)
    frames = _frames(pipe, source, audio, controls, args.stream)
    generation = {"model": "vasa_jax", "latent_workdir": args.latent_workdir,
                  "motion_workdir": args.motion_workdir, "seed": controls.seed,
                  "steps": controls.steps, "sampler": controls.sampler,
                  "cfg": dict(controls.cfg), "gaze": controls.gaze,
                  "distance": controls.distance, "emotion": controls.emotion}
    size = args.size or max(MIN_OUTPUT_SIZE, pipe.resolution)
    with user_errors(provenance.ProvenanceError):
        write_marked_video(args.out, resize_frames(frames, size), audio,
                           watermark_on=not args.no_watermark,
                           c2pa_on=not args.no_c2pa, identity=identity, generation=generation)
    marks = [m for m, off in (("watermark", args.no_watermark), ("C2PA manifest", args.no_c2pa))
             if not off]
    print(f"Wrote {args.out} ({', '.join(marks) or 'NO safety marks: recorded in its tags'}).")
    return args.out


def verify(args):
    """Print a video's watermark, C2PA manifest and safety tags; returns the report."""
    from vasa_jax.safety.publish import verify_video

    if not os.path.isfile(args.video):
        raise UserError(f"{args.video!r} does not exist.")
    with user_errors(ValueError, prefix=f"Cannot read {args.video!r} as a video: "):
        report = verify_video(args.video)
    print("\n".join(report.lines()))
    return report


def add_parser(sub) -> None:
    """``generate`` and ``verify``."""
    g = sub.add_parser("generate", help="a talking-face mp4 (with sound) from a portrait photo "
                       "and a speech file; watermarked and C2PA-signed by default")
    g.add_argument("--image", required=True, help="portrait photo (JPEG, PNG, ...)")
    g.add_argument("--audio", required=True, help="speech (wav, mp3, m4a, flac; any rate)")
    g.add_argument("--out", required=True, help="output .mp4")
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
                   help="generate window by window as audio arrives (no length limit)")
    g.add_argument("--max-seconds", type=float, default=300.0, help="offline length limit")
    g.add_argument("--size", type=int, default=None,
                   help="output side in px (default: the model's, at least 256, where the "
                        "watermark survives re-encoding and resizing)")
    g.add_argument("--no-watermark", action="store_true",
                   help="do not watermark the frames (recorded in the file's tags)")
    g.add_argument("--no-c2pa", action="store_true",
                   help="do not sign a C2PA manifest (recorded in the file's tags)")
    g.add_argument("--c2pa-cert", help="your signing certificate chain (PEM; default: a local "
                   "development certificate)")
    g.add_argument("--c2pa-key", help="the private key of --c2pa-cert (PEM)")
    g.set_defaults(func=generate)

    v = sub.add_parser("verify", help="report a video's watermark, C2PA manifest and safety "
                       "tags")
    v.add_argument("video")
    v.set_defaults(func=verify)
