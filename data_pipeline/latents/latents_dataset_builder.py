"""TFDS builder ``latents``: stage-1 motion latents + audio features of every clip of a video set.

Runs a trained stage-1 encoder (``FaceLatentModel.encode_motion``, jit-compiled, frames in
chunks) and a stage-2 audio frontend over every clip of a prepared source dataset (anything
``data_pipeline.loader.open_source`` reads that has ``frames`` and ``audio``: SynthTalk,
VoxCeleb2), keeping the source's splits and clip order. Per clip::

  motion          (T, 7 + dyn_dim) float32   [z_pose, z_dyn] per frame; fields in metadata
  audio_features  (T, A) float32             the frontend's output (``metadata['audio']``)
  audio           (T * 640,) int16           the source's 16 kHz PCM (for lip-sync metrics)
  identity, clip, emotion, gaze, distance    copied from the source when it has them (else
                                             identity/clip -1, emotion 0, gaze (0, 0),
                                             distance 0.5)
  source_index    int64                      the clip's index in the source split

Configs are made at run time from (source dataset, source config, stage-1 workdir, audio
settings): the name is ``{source_dataset}_{source_config}_{hash8}``, with hash8 taken over the
stage-1 checkpoint step, its config (without the fields that only place or report a run) and the
frontend's full settings, so the same inputs always give the same name. Build, then read::

  name = build_latents("synthtalk", "res64_small", "runs/latent")
  source, info = data_pipeline.loader.open_source("latents", name, "train")

and train stage 2 with ``--config=configs/motion.py:synthtalk_latents
--config.data.config=<name>``. Stored in ArrayRecord by default. With ``use_beam=True`` each
split is a Beam pipeline (``beam.Create(indices) | beam.FlatMap(encode_one_clip)``) whose
workers load the encoder once per process; needs ``pip install 'vasa-jax[beam]'``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from flax import nnx

from data_pipeline.beam import import_beam
from data_pipeline.loader import (DatasetNotFoundError, dataset_dir, decode_frame,
                                  default_data_dir, open_source)
from vasa_jax.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from vasa_jax.latent.model import to_unit
from vasa_jax.latent.warp import POSE_FIELDS
from vasa_jax.chunks import map_chunks
from vasa_jax.motion.audio import frontend_from_config

DEFAULT_AUDIO = {"frontend": "mel", "n_mels": 40, "hops_per_frame": 4}  # as configs/motion.py
DEFAULTS = {"identity": -1, "clip": -1, "emotion": 0, "gaze": (0.0, 0.0), "distance": 0.5}
CLIP_FIELDS = tuple(DEFAULTS)
# Stage-1 config fields that place, schedule or report a run but do not change its weights.
_RUN_ONLY_FIELDS = {
    "": ("mesh_shape", "num_devices", "axis_rules", "variant", "eval"),
    "data": ("data_dir", "num_workers", "worker_buffer_size"),
    "train": ("async_checkpoints", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints", "profile_steps", "profile_first_step", "image_every"),
}


def _import_beam():
    return import_beam("Building latents with use_beam=True needs Apache Beam",
                       "or build without Beam")


# -- stage-1 checkpoint ------------------------------------------------------------------------

def _train_hint(workdir: str) -> str:
    return (f"Train stage 1 first: `vasa-jax train latent --workdir {workdir}` (e.g. "
            f"--variant synthtalk64), then build the latents again.")


def stage1_checkpoint(workdir: str, step: int | None = None) -> tuple[int, dict]:
    """(step, config dict) of the stage-1 checkpoint in ``workdir`` (default: latest step).

    Raises FileNotFoundError naming the training command if there is none."""
    from vasa_jax.checkpoint import Checkpointer

    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"No stage-1 checkpoint under {ckpt_dir}. {_train_hint(workdir)}")
    ckpt = Checkpointer(ckpt_dir, use_async=False, create=False)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            raise FileNotFoundError(f"No stage-1 checkpoint under {ckpt_dir}. "
                                    f"{_train_hint(workdir)}")
        step = latest if step is None else int(step)
        if step not in ckpt.manager.all_steps():
            raise FileNotFoundError(f"No stage-1 checkpoint of step {step} under {ckpt_dir}; it "
                                    f"has steps {sorted(ckpt.manager.all_steps())}.")
        config = ckpt.restore_config(step)
    finally:
        ckpt.close()
    if config.get("task") != "latent":
        raise ValueError(f"{workdir} holds a {config.get('task')!r} run, not a stage-1 (latent) "
                         f"run. {_train_hint(workdir)}")
    return step, config


def _weights_config(config: dict) -> dict:
    """The stage-1 config without the fields that cannot change the weights."""
    out = json.loads(json.dumps(config))
    for section, keys in _RUN_ONLY_FIELDS.items():
        d = out.get(section, {}) if section else out
        for k in keys:
            d.pop(k, None)
    return out


class Stage1Encoder:
    """The EMA stage-1 model of a checkpoint on this host, as a jit-compiled motion encoder:
    ``encoder(frames (T, R, R, 3) uint8) -> (T, 7 + dyn_dim) float32 = [z_pose, z_dyn]``,
    run in chunks of at most ``chunk_size`` frames (the last padded to a power of two)."""

    def __init__(self, workdir: str, step: int | None = None, chunk_size: int = 64):
        from vasa_jax.models import restore_model

        stage1_checkpoint(workdir, step)  # the clear errors first
        run = restore_model(workdir, step=step, task="latent")
        self.model, self.step, self.config = run.model, run.step, run.config
        self.resolution = int(self.model.resolution)
        self.dyn_dim = int(self.model.dyn_dim)
        self.chunk_size = int(chunk_size)
        graphdef, self.state = nnx.split(self.model)

        def encode(state, frames):  # (b, R, R, 3) uint8 -> (b, 7 + dyn_dim) = [z_pose, z_dyn]
            z_pose, z_dyn = nnx.merge(graphdef, state).encode_motion(to_unit(frames))
            return jnp.concatenate([z_pose, z_dyn], axis=-1)

        # graphdef is closed over, not a static argument: a model rebuilt from a checkpoint's
        # JSON config holds lists, which do not hash.
        self._encode = jax.jit(encode)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if (frames.ndim != 4 or frames.shape[1:] != (self.resolution, self.resolution, 3)
                or frames.dtype != np.uint8):
            raise ValueError(f"Expected uint8 frames (T, {self.resolution}, {self.resolution}, 3),"
                             f" got {frames.dtype} {frames.shape}.")
        z = map_chunks(lambda c: self._encode(self.state, c), frames, chunk_size=self.chunk_size)
        if z is None:
            return np.zeros((0, 7 + self.dyn_dim), np.float32)
        return z.astype(np.float32)


# One encoder per (workdir, step) per process: the generator path and every Beam worker load it
# once, however many clips they encode.
_ENCODERS: dict[tuple[str, int | None], Stage1Encoder] = {}
_SOURCES: dict[tuple, Any] = {}


def load_encoder(workdir: str, step: int | None = None) -> Stage1Encoder:
    """The (cached) ``Stage1Encoder`` of ``workdir`` at ``step`` (default: latest)."""
    key = (os.path.abspath(workdir), step)
    if key not in _ENCODERS:
        _ENCODERS[key] = Stage1Encoder(workdir, step)
    return _ENCODERS[key]


# -- config --------------------------------------------------------------------------------------

def _frontend_settings(audio: dict | None) -> dict:
    """The frontend's full settings ({"frontend": name, field: value, ...}) from a dict in the
    form of configs/motion.py's ``audio`` (key ``frontend``) or make_frontend's (key ``name``)."""
    a = dict(DEFAULT_AUDIO if audio is None else audio)
    name = a.pop("frontend", None) or a.pop("name", None) or "mel"
    a.pop("name", None)
    frontend = frontend_from_config({"frontend": name, **a})
    fields = (dataclasses.asdict(frontend) if dataclasses.is_dataclass(frontend) else dict(a))
    fields.pop("name", None)
    return {"frontend": name, **fields}


@dataclasses.dataclass(kw_only=True)
class LatentsConfig(tfds.core.BuilderConfig):
    """Where the clips come from, which stage-1 checkpoint encodes them, and the audio frontend.
    Make one with ``make_config``."""

    source_dataset: str = "synthtalk"
    source_config: str = ""
    source_data_dir: str = ""
    stage1_workdir: str = ""
    stage1_step: int = 0
    audio_json: str = "{}"  # the frontend's full settings (JSON, for a hashable config)
    # From the stage-1 checkpoint's config:
    resolution: int = 0
    dyn_dim: int = 0
    stage1_variant: str = ""

    @property
    def audio(self) -> dict:
        return json.loads(self.audio_json)


def config_name(source_dataset: str, source_config: str, stage1_step: int, stage1_config: dict,
                audio: dict) -> str:
    """``{source_dataset}_{source_config}_{hash8}``: hash8 of the stage-1 step, its
    weight-determining config and the frontend settings."""
    key = json.dumps({"step": int(stage1_step), "config": _weights_config(stage1_config),
                      "audio": audio}, sort_keys=True, default=str)
    return f"{source_dataset}_{source_config}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def source_info(source_dataset: str, source_config: str, source_data_dir: str | None):
    """The source's DatasetInfo; DatasetNotFoundError (with the build command) if not built."""
    try:
        path = dataset_dir(source_dataset, source_config, source_data_dir)
    except DatasetNotFoundError as e:
        raise DatasetNotFoundError(f"The latents build reads a prepared source dataset, but: "
                                   f"{e}") from None
    return tfds.builder_from_directory(path).info


def make_config(source_dataset: str, source_config: str, stage1_workdir: str, *,
                source_data_dir: str | None = None, stage1_step: int | None = None,
                audio: dict | None = None) -> LatentsConfig:
    """The config for these inputs, after checking them: the stage-1 checkpoint exists
    (FileNotFoundError), the source is built (DatasetNotFoundError) and has frames and audio, and
    its frames have the stage-1 model's resolution (ValueError). Loads no weights."""
    step, s1 = stage1_checkpoint(stage1_workdir, stage1_step)
    settings = _frontend_settings(audio)
    source_data_dir = source_data_dir or default_data_dir()
    info = source_info(source_dataset, source_config, source_data_dir)
    missing = [k for k in ("frames", "audio") if k not in info.features]
    if missing:
        raise ValueError(f"Source {source_dataset}/{source_config} has no {' or '.join(missing)};"
                         f" latents need a dataset with both frames and audio.")
    fshape = info.features["frames"].shape
    res = int(s1["model"]["resolution"])
    if tuple(fshape[1:3]) != (res, res):
        raise ValueError(
            f"Source {source_dataset}/{source_config} has {fshape[1]}x{fshape[2]} frames but the "
            f"stage-1 model in {stage1_workdir} (variant {s1.get('variant', '?')!r}) takes "
            f"{res}x{res}. Build the latents from a {res} px source config, or train stage 1 on "
            f"this one (--config.data.config={source_config} "
            f"--config.data.resolution={fshape[1]}).")
    name = config_name(source_dataset, source_config, step, s1, settings)
    return LatentsConfig(
        name=name,
        description=(f"Stage-1 latents (step {step} of {stage1_workdir}) and {settings['frontend']}"
                     f" audio features of {source_dataset}/{source_config}."),
        source_dataset=source_dataset, source_config=source_config,
        source_data_dir=str(source_data_dir), stage1_workdir=os.path.abspath(stage1_workdir),
        stage1_step=step, audio_json=json.dumps(settings, sort_keys=True), resolution=res,
        dyn_dim=int(s1["model"]["dyn_dim"]), stage1_variant=str(s1.get("variant", "")))


# -- one clip ------------------------------------------------------------------------------------

def _pcm16(audio) -> np.ndarray:
    audio = np.asarray(audio)
    if np.issubdtype(audio.dtype, np.floating):
        return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    return audio.astype(np.int16)


@dataclasses.dataclass(frozen=True)
class ClipEncoder:
    """``encode_one_clip``: source index -> ``[(key, example)]`` of the latents dataset. Picklable
    (Beam ships it to workers); the encoder and the source are opened lazily, once per process.
    """

    source_dataset: str
    source_config: str
    source_data_dir: str
    split: str
    stage1_workdir: str
    stage1_step: int
    audio_json: str
    fields: tuple  # clip fields the source has

    def source(self):
        key = (self.source_dataset, self.source_config, self.source_data_dir, self.split)
        if key not in _SOURCES:
            _SOURCES[key] = open_source(self.source_dataset, self.source_config, self.split,
                                        self.source_data_dir)[0]
        return _SOURCES[key]

    def __call__(self, index: int) -> list[tuple[int, dict[str, Any]]]:
        index = int(index)
        ex = self.source()[index]
        frames = np.stack([decode_frame(b) for b in ex["frames"]])
        motion = load_encoder(self.stage1_workdir, self.stage1_step)(frames)
        audio = _pcm16(ex["audio"])
        if len(audio) != len(frames) * SAMPLES_PER_FRAME:
            raise ValueError(
                f"Clip {index} of {self.source_dataset}/{self.source_config} {self.split} has "
                f"{len(frames)} frames but {len(audio)} audio samples (expected "
                f"{len(frames) * SAMPLES_PER_FRAME}: {SAMPLES_PER_FRAME} per frame).")
        features = frontend_from_config(json.loads(self.audio_json))(audio)
        out = {"motion": motion, "audio_features": np.asarray(features, np.float32),
               "audio": audio, "source_index": np.int64(index)}
        for k in CLIP_FIELDS:
            out[k] = ex[k] if k in self.fields else DEFAULTS[k]
        out["gaze"] = np.asarray(out["gaze"], np.float32)
        out["distance"] = np.float32(out["distance"])
        return [(index, out)]  # int keys: Beam's writer orders unshuffled examples by them


# -- builder -------------------------------------------------------------------------------------

class Latents(tfds.core.GeneratorBasedBuilder):
    """Stage-1 motion latents and audio features of every clip of a talking-face dataset."""

    name = "latents"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS: list = []  # made at run time (make_config)

    def __init__(self, *, config: LatentsConfig | None = None, source_dataset: str | None = None,
                 source_config: str | None = None, source_data_dir: str | None = None,
                 stage1_workdir: str | None = None, stage1_step: int | None = None,
                 audio: dict | None = None, use_beam: bool = False, file_format=None,
                 **kwargs):
        """Either a ``LatentsConfig`` (``config=``) or the inputs it is made from
        (``source_dataset``, ``source_config``, ``stage1_workdir``, optional ``source_data_dir``
        (default: the loader's default data dir), ``stage1_step`` (default: latest) and
        ``audio`` (the frontend, as configs/motion.py's ``audio``; default mel 40 x 4)).
        ``use_beam`` makes every split a Beam pipeline. ``file_format`` defaults to ArrayRecord.
        """
        if use_beam:
            _import_beam()
        if not isinstance(config, LatentsConfig):
            if config is not None or not (source_dataset and source_config and stage1_workdir):
                raise ValueError(
                    "latents configs are made at run time: pass source_dataset, source_config "
                    "and stage1_workdir (or a LatentsConfig from make_config). Read a built one "
                    "with data_pipeline.loader.open_source('latents', name, split, data_dir).")
            config = make_config(source_dataset, source_config, stage1_workdir,
                                 source_data_dir=source_data_dir, stage1_step=stage1_step,
                                 audio=audio)
        self._use_beam = use_beam
        self._source_info = None
        super().__init__(config=config, file_format=file_format or "array_record", **kwargs)

    @property
    def source_info(self):
        if self._source_info is None:
            c = self.builder_config
            self._source_info = source_info(c.source_dataset, c.source_config, c.source_data_dir)
        return self._source_info

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        src = self.source_info
        t = src.features["frames"].shape[0]
        audio_dim = int(frontend_from_config(c.audio).dim)
        motion_dim = len(POSE_FIELDS) + c.dyn_dim
        defaults = {
            "identity": tfds.features.Scalar(np.int32, doc="person id (-1: none in the source)"),
            "clip": tfds.features.Scalar(np.int32, doc="clip index (-1: none in the source)"),
            "emotion": tfds.features.Scalar(np.int32, doc="emotion (0: none in the source)"),
            "gaze": tfds.features.Tensor(shape=(2,), dtype=np.float32,
                                         doc="main gaze (theta, phi), radians"),
            "distance": tfds.features.Scalar(np.float32, doc="normalised distance in [0, 1]"),
        }
        clip_features = {k: src.features[k] if k in src.features else defaults[k]
                         for k in CLIP_FIELDS}
        motion_fields = list(POSE_FIELDS) + [f"dyn_{i}" for i in range(c.dyn_dim)]
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "motion": tfds.features.Tensor(shape=(t, motion_dim), dtype=np.float32,
                                               doc="per frame [z_pose, z_dyn]: "
                                                   + ", ".join(motion_fields)),
                "audio_features": tfds.features.Tensor(shape=(t, audio_dim), dtype=np.float32,
                                                       doc="audio frontend per frame"),
                "audio": tfds.features.Audio(
                    shape=(None if t is None else t * SAMPLES_PER_FRAME,), dtype=np.int16,
                    sample_rate=SAMPLE_RATE, file_format=None),
                **clip_features,
                "source_index": tfds.features.Scalar(np.int64,
                                                     doc="index of the clip in the source split"),
            }),
            supervised_keys=None,
            disable_shuffling=True,  # the source's clip order (the keys are source indices)
            homepage="https://github.com/vasa-jax/vasa_jax",
            metadata=tfds.core.MetadataDict(
                fps=FPS, sample_rate=SAMPLE_RATE, source_dataset=c.source_dataset,
                source_config=c.source_config, source_version=str(src.version),
                stage1_workdir=c.stage1_workdir, stage1_step=c.stage1_step,
                stage1_variant=c.stage1_variant, resolution=c.resolution, dyn_dim=c.dyn_dim,
                pose_fields=list(POSE_FIELDS), motion_fields=motion_fields, audio=c.audio,
                audio_dim=audio_dim,
                clip_fields_from_source=[k for k in CLIP_FIELDS if k in src.features]),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything comes from the source dataset
        return {split: self._generate_examples(split) for split in self.source_info.splits}

    def _generate_examples(self, split: str):
        c = self.builder_config
        encode_one_clip = ClipEncoder(
            c.source_dataset, c.source_config, c.source_data_dir, split, c.stage1_workdir,
            c.stage1_step, c.audio_json,
            tuple(k for k in CLIP_FIELDS if k in self.source_info.features))
        indices = list(range(self.source_info.splits[split].num_examples))
        if self._use_beam:
            beam = _import_beam()
            return (beam.Create(indices)
                    | f"EncodeClips_{split}" >> beam.FlatMap(encode_one_clip))
        return (kv for i in indices for kv in encode_one_clip(i))


def build_latents(source_dataset: str, source_config: str, stage1_workdir: str,
                  data_dir: str | None = None, source_data_dir: str | None = None,
                  audio: dict | None = None, use_beam: bool = False, *,
                  stage1_step: int | None = None, overwrite: bool = False,
                  beam_flags: Sequence[str] = ()) -> str:
    """Build (or reuse) the latents of ``source_dataset/source_config`` with the stage-1
    encoder in ``stage1_workdir``; returns the config name (for ``open_source('latents', name,
    ...)`` and ``--config.data.config=<name>``).

    ``data_dir`` (output) defaults to the loader's default data dir, ``source_data_dir`` to
    ``data_dir``. ``use_beam`` runs each split as a Beam pipeline with ``beam_flags`` (default:
    the DirectRunner in this process), e.g. ``["--runner=DataflowRunner", ...]``.
    """
    data_dir = data_dir or default_data_dir()
    builder = Latents(source_dataset=source_dataset, source_config=source_config,
                      source_data_dir=source_data_dir or data_dir, stage1_workdir=stage1_workdir,
                      stage1_step=stage1_step, audio=audio, use_beam=use_beam, data_dir=data_dir)
    mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    download_config = tfds.download.DownloadConfig(download_mode=mode)
    if use_beam:
        beam = _import_beam()
        download_config = tfds.download.DownloadConfig(
            download_mode=mode,
            beam_options=beam.options.pipeline_options.PipelineOptions(flags=list(beam_flags)))
    builder.download_and_prepare(download_config=download_config)
    name = builder.builder_config.name
    logging.info("Latents %s ready in %s; train stage 2 with --config.data.config=%s",
                 name, builder.data_dir, name)
    return name
