"""The ``vasa-jax`` command.

  vasa-jax quickstart [--workdir DIR]            the main job on the embedded SynthTalk data
  vasa-jax data build synthtalk [--config NAME]  build a SynthTalk TFDS dataset (ArrayRecord)
  vasa-jax data show [--config NAME]             contact sheet PNG + mp4 with sound of a split
  vasa-jax data build latents --stage1-workdir DIR   stage-1 motion latents of a video dataset
  vasa-jax data build voxceleb2 --manual-dir DIR [--beam-runner R]   VoxCeleb2 (ArrayRecord)
  vasa-jax train latent --workdir DIR            train stage 1 (FaceLatentModel) on one host
  vasa-jax train motion --workdir DIR            train stage 2 (MotionDiT) on one host
  vasa-jax train probe --workdir DIR             train the SynthTalk probe (a measuring CNN)
  vasa-jax train syncnet|capp --workdir DIR      train the lip-sync / audio-pose instruments
  vasa-jax plan --config configs/latent.py:paper --topology v5p-64   fit and speed on a TPU slice
  vasa-jax ship --workdir DIR --name NAME        a trained probe -> shipped weights (package:NAME)
  vasa-jax eval latent --workdir DIR             self/cross-reenactment report for stage 1
  vasa-jax eval ladder --rung NAME=DIR ...       stage 1's diagnostic ladder as one table
  vasa-jax eval motion --workdir DIR             lip-sync / head-motion / gaze table for stage 2
  vasa-jax eval --generated DIR --real DIR       the paper-style table of clip sets (mp4 + json)
  vasa-jax eval export-synthtalk --out DIR       a SynthTalk split as a real clip set
  vasa-jax eval generate-set --real DIR ...      a generated clip set from a real one
  vasa-jax generate --image P --audio A --out V  a talking-face mp4 from a photo and speech
  vasa-jax verify VIDEO                          watermark, C2PA manifest and safety tags
  vasa-jax serve --latent-workdir D --motion-workdir D   the web app + real-time WebSocket
  vasa-jax convert wav2vec2 --hf-dir D --out O   Hugging Face wav2vec2 weights -> orbax

Multi-host training goes through ``launch/train.py`` (see the README).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is only a TFDS/clu dependency

# Each command group registers its own subcommands; handlers parse and call the library.
from vasa_jax.cli import convert, data, generate, plan, quickstart, serve, ship, train  # noqa: E402
from vasa_jax.cli import eval as evaluate  # noqa: E402
from vasa_jax.cli.common import UserError  # noqa: E402
from vasa_jax.xla_cpu import prefer_fast_cpu_compiles  # noqa: E402

# The order of --help.
GROUPS = (quickstart, ship, train, plan, evaluate, generate, serve, convert, data)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vasa-jax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    prefer_fast_cpu_compiles()
    try:
        args.func(args)
    except UserError as e:
        print(f"vasa-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


