"""The end of the main job: a held-out SynthTalk person speaking held-out audio.

One test-split identity's first clip gives the photo (its frame 0, already in the training
framing); another of its clips gives the speech and the ground truth. The trained pipeline turns
photo + speech into ``generated.mp4``; ``side_by_side.mp4`` shows the ground-truth clip (left)
next to the generated one (right), with the speech. Both are upscaled to at least 256 px, where
the watermark survives re-encoding and resizing, and both carry it and a C2PA manifest.
"""

from __future__ import annotations

import os

import numpy as np

from data_pipeline.loader import decode_frame, open_source
from vasa_jax.media.audio import to_float32
from vasa_jax.media.video_io import resize_frames
from vasa_jax.pipeline import Controls, TalkingFacePipeline
from vasa_jax.safety.publish import MIN_OUTPUT_SIZE, write_marked_video


def held_out_pair(dataset_config: str, data_dir: str | None, split: str = "test"
                  ) -> tuple[dict, dict]:
    """Two clips of the same identity of ``split``: (photo clip, speech clip)."""
    source, _ = open_source("synthtalk", dataset_config, split, data_dir)
    first: dict[int, int] = {}
    for i in range(len(source)):
        ident = int(source[i]["identity"])
        if ident in first:
            return source[first[ident]], source[i]
        first[ident] = i
    raise ValueError(f"No identity has two clips in the {split} split of {dataset_config}.")


def run_demo(latent_workdir: str, motion_workdir: str, dataset_config: str,
             data_dir: str | None, out_dir: str, *, controls: Controls | None = None) -> dict:
    """Write ``generated.mp4`` and ``side_by_side.mp4`` into ``out_dir``; returns their paths
    and what was generated."""
    photo_clip, speech_clip = held_out_pair(dataset_config, data_dir)
    photo = decode_frame(photo_clip["frames"][0])
    truth = np.stack([decode_frame(b) for b in speech_clip["frames"]])
    audio = to_float32(speech_clip["audio"])
    pipe = TalkingFacePipeline.from_checkpoints(latent_workdir, motion_workdir)
    c = controls or pipe.defaults
    source = pipe.prepare_source(photo, detect=False)  # a dataset frame: already framed
    out = pipe.generate(source, audio, c)
    os.makedirs(out_dir, exist_ok=True)
    facts = {"model": "vasa_jax", "seed": c.seed, "steps": c.steps,
             "identity": int(speech_clip["identity"]), "demo": "held-out SynthTalk identity"}
    size = max(MIN_OUTPUT_SIZE, pipe.resolution)
    generated = write_marked_video(os.path.join(out_dir, "generated.mp4"),
                                   resize_frames(out.frames, size), audio, generation=facts)
    n = min(len(truth), len(out.frames))
    both = np.concatenate([resize_frames(truth[:n], size), resize_frames(out.frames[:n], size)],
                          axis=2)
    side = write_marked_video(os.path.join(out_dir, "side_by_side.mp4"), both,
                              audio[: n * 640], generation=dict(facts, layout="truth | ours"))
    return {"generated": generated, "side_by_side": side, "frames": len(out.frames),
            "identity": int(speech_clip["identity"]), "resolution": pipe.resolution}
