"""TFDS builder ``voxceleb2``: VoxCeleb2 face tracks as aligned 25 fps clips with 16 kHz audio.

VoxCeleb2 (Chung, Nagrani and Zisserman, 2018; 6,112 identities, about 1.1M utterances of
224 x 224 25 fps face-track mp4s with AAC audio; CC BY 4.0) is distributed after registration,
so the builder reads a manual download (layout in ``MANUAL_DOWNLOAD_INSTRUCTIONS``). Each
utterance ``idXXXXX/<video_id>/NNNNN.mp4`` is decoded with PyAV, resampled to 25 fps, centre
cropped and resized to the config's resolution, its audio resampled to 16 kHz mono, and cut
into clips of ``clip_frames`` frames (alignment contract: ``data_pipeline.voxceleb2.decode``).
Per clip::

  frames     (T, R, R, 3) uint8, stored as JPEG (q95)    T = clip_frames, R = resolution
  audio      (T * 640,) int16, 16 kHz PCM                frame k owns samples [640 k, 640 (k+1))
  identity   int32, the number of idXXXXX
  clip       int32, the clip's index within its utterance (time [c T, (c + 1) T) / 25 s)
  video_id   text, the YouTube id of the source video
  utterance  int32, the NNNNN of the utterance file
  motion     (T, 12) float32, face-mesh motion labels in SynthTalk's field order and signs
  mouth_centre (T, 2) float32, the inner-lip midpoint in image half-widths

the layout ``data_pipeline.loader`` reads from ``synthtalk``. ``motion`` and ``mouth_centre``
(``data_pipeline.voxceleb2.face_labels``; NaN on frames without a face; left out by configs
made with ``face_labels=False``) are what stage 1's guidance switches read, as SynthTalk's
ground truth on the embedded dataset; VoxCeleb2 has none of SynthTalk's clip-level fields
(emotion, gaze, distance). Splits: ``train`` and ``validation`` from the
official dev identities (validation: a fraction of them, chosen deterministically from the
sorted identity list), ``test`` from the official test identities. Stored as ArrayRecord.

Unreadable, truncated, audio-less or too short files are skipped, never a crash: each is logged
(``logging.warning``, with its path and the reason), counted, and recorded in the dataset's
``build_report.json`` (``data_pipeline.voxceleb2.report``). An optional quality filter
(``quality_scorer``/``quality_threshold``, see ``data_pipeline.voxceleb2.quality``) refuses
clips below a blind quality score.

Two ways to run, giving the same keyed examples:

* plain (``use_beam=False``): one process walks the manual dir; for small subsets;
* Apache Beam (``use_beam=True``): ``Create(identities) | FlatMap(list utterances) |
  Reshuffle | FlatMap(decode one utterance)``, on the DirectRunner locally or on Dataflow,
  Flink or Spark via the pipeline options given to ``build_voxceleb2``.

Command line: ``vasa-jax data build voxceleb2 --manual-dir DIR [--beam-runner ...]``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import time
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data_pipeline.beam import import_beam
from data_pipeline.features import clip_features
from data_pipeline.synthtalk.motion import MOTION_DIM
from data_pipeline.voxceleb2 import decode, face_labels, quality, report
from vasa_jax.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

RESOLUTIONS = (256, 512)
DEFAULT_CLIP_FRAMES = 75  # 3 s
DEFAULT_VALIDATION_FRACTION = 0.02
PARTS = {"dev": ("train", "validation"), "test": ("test",)}
_IDENTITY = re.compile(r"id(\d+)")

LAYOUT = """\
  MANUAL_DIR/
    dev/mp4/idXXXXX/<video_id>/NNNNN.mp4    e.g. dev/mp4/id00012/21Uxsk56VDQ/00001.mp4
    dev/aac/idXXXXX/<video_id>/NNNNN.m4a    optional: audio for mp4s that have none
    test/mp4/idXXXXX/<video_id>/NNNNN.mp4
    test/aac/idXXXXX/<video_id>/NNNNN.m4a   optional
  (dev or test alone is fine: a missing part gives no split.)"""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
VoxCeleb2 is distributed after registration (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/,
licence CC BY 4.0). Download the "dev" and "test" face-track video archives (mp4, 224x224,
25 fps, with AAC audio) and, optionally, the separate audio archives (aac/m4a). Concatenate the
multi-part dev archive (cat vox2_dev_mp4_parta* > vox2_mp4.zip), then unzip so that the
manual directory looks like this:

{LAYOUT}

i.e. unzip the dev archive into MANUAL_DIR/dev/ (it holds mp4/idXXXXX/...) and the test
archive into MANUAL_DIR/test/. Audio is taken from each mp4; the aac trees are read only for
mp4s without an audio stream. Any subset of identities, videos or utterances works (e.g. a few
identities to try the pipeline). Then:

  vasa-jax data build voxceleb2 --manual-dir MANUAL_DIR [--config res256|res512]
"""


class ManualDirError(FileNotFoundError):
    """The manual directory is missing, empty or not in VoxCeleb2's layout."""


class NoClipsError(RuntimeError):
    """Every file of a split was skipped, so the split would be empty."""


def _import_beam():
    return import_beam("Building voxceleb2 with Apache Beam needs apache-beam",
                       "or build without --beam-runner")


# -- configs -------------------------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class Voxceleb2Config(tfds.core.BuilderConfig):
    """Frame side, clip length, validation share of the dev identities and the quality filter.
    Make one with ``make_config``."""

    resolution: int = 256
    clip_frames: int = DEFAULT_CLIP_FRAMES
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    quality_scorer: str = ""  # a key of quality.SCORERS; "" keeps every clip
    quality_threshold: float = 0.0  # clips scoring below this are refused
    face_labels: bool = True  # per-frame face-mesh motion labels (face_labels.py)

    def __post_init__(self):
        if self.resolution < 16 or self.resolution % 2:
            raise ValueError(f"VoxCeleb2 resolution must be even and >= 16, got "
                             f"{self.resolution}.")
        if self.clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {self.clip_frames}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got "
                             f"{self.validation_fraction}.")
        if self.quality_scorer:
            quality.get_scorer(self.quality_scorer)  # a clear error for an unknown name


def _num(x: float) -> str:
    return f"{x:g}".replace("+", "").replace("-", "m").replace(".", "p")


def make_config(resolution: int = 256, clip_frames: int = DEFAULT_CLIP_FRAMES, *,
                validation_fraction: float | None = None, quality_scorer: str | None = None,
                quality_threshold: float | None = None, face_labels: bool = True
                ) -> Voxceleb2Config:
    """``res{R}`` for the defaults (3-s clips, 2 % of dev identities for validation, no quality
    filter, face-mesh labels); anything else gets a distinct name, e.g. ``res64_t25``,
    ``res256_t75_val5_q-laplacian_sharpness-40`` or ``res256_nolabels``."""
    frac = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
    scorer = quality_scorer or ""
    threshold = 0.0 if quality_threshold is None else float(quality_threshold)
    if threshold and not scorer:
        raise ValueError("A quality threshold needs a quality scorer (e.g. "
                         "--quality-scorer laplacian_sharpness).")
    name = f"res{resolution}"
    if clip_frames != DEFAULT_CLIP_FRAMES or frac != DEFAULT_VALIDATION_FRACTION or scorer:
        name += f"_t{clip_frames}"
    if frac != DEFAULT_VALIDATION_FRACTION:
        name += f"_val{_num(100 * frac)}"
    if scorer:
        name += f"_q-{scorer}-{_num(threshold)}"
    if not face_labels:
        name += "_nolabels"
    desc = (f"{clip_frames}-frame clips ({clip_frames / FPS:g} s) at {resolution} px; "
            f"{100 * frac:g} % of dev identities for validation"
            + (f"; clips with {scorer} < {threshold:g} refused" if scorer else "")
            + ("; face-mesh motion labels." if face_labels else "; no motion labels."))
    return Voxceleb2Config(name=name, description=desc, resolution=resolution,
                           clip_frames=clip_frames, validation_fraction=frac,
                           quality_scorer=scorer, quality_threshold=threshold,
                           face_labels=face_labels)


_NAME = re.compile(r"res(?P<r>\d+)(?:_t(?P<t>\d+))?(?:_val(?P<v>[\dp]+))?"
                   r"(?:_q-(?P<q>\w+?)-(?P<th>m?[\dp]+(?:e[pm]?\d+)?))?(?P<nl>_nolabels)?")


def _unnum(s: str) -> float:
    return float(s.replace("p", ".").replace("m", "-"))


def config_from_name(name: str) -> Voxceleb2Config:
    """The config ``make_config`` names ``name`` (e.g. ``res256``, ``res64_t25_val25``);
    ValueError for a name it cannot have made."""
    m = _NAME.fullmatch(name)
    if not m:
        raise ValueError(f"{name!r} is not a voxceleb2 config name; use res256, res512 or "
                         f"res{{R}}_t{{frames}}[_val{{percent}}][_q-{{scorer}}-{{threshold}}] "
                         f"(as printed by a build), or give --resolution/--clip-frames.")
    cfg = make_config(int(m["r"]), int(m["t"] or DEFAULT_CLIP_FRAMES),
                      validation_fraction=_unnum(m["v"]) / 100 if m["v"] else None,
                      quality_scorer=m["q"], quality_threshold=_unnum(m["th"]) if m["th"] else None,
                      face_labels=not m["nl"])
    if cfg.name != name:
        raise ValueError(f"{name!r} is not the canonical name of its settings; use "
                         f"{cfg.name!r}.")
    return cfg


# -- the manual directory ------------------------------------------------------------------------

def _layout_error(manual_dir, problem: str) -> ManualDirError:
    return ManualDirError(
        f"{problem}\nThe voxceleb2 builder expects the manual directory {manual_dir} to hold "
        f"the official VoxCeleb2 download in this layout:\n{LAYOUT}\nFix: download and unzip "
        f"VoxCeleb2 there (see MANUAL_DOWNLOAD_INSTRUCTIONS in "
        f"data_pipeline/voxceleb2/voxceleb2_dataset_builder.py), or pass the directory that "
        f"has dev/ and test/ with --manual-dir.")


def find_identities(manual_dir: epath.PathLike) -> dict[str, list[str]]:
    """``{"dev": [...], "test": [...]}``: the sorted identity directory names (``idXXXXX``)
    under ``<manual_dir>/<part>/mp4``; parts without any are left out. Raises ManualDirError
    (printing the expected layout) when the directory is missing, empty or has neither part."""
    root = epath.Path(manual_dir)
    if not root.exists():
        raise _layout_error(root, f"The manual directory {root} does not exist.")
    if not root.is_dir() or not any(True for _ in root.iterdir()):
        raise _layout_error(root, f"The manual directory {root} is empty (or not a directory).")
    found = {}
    for part in PARTS:
        mp4 = root / part / "mp4"
        if not mp4.is_dir():
            continue
        ids = sorted(p.name for p in mp4.iterdir() if _IDENTITY.fullmatch(p.name) and p.is_dir())
        if ids:
            found[part] = sorted(ids, key=lambda n: int(n[2:]))
    if not found:
        present = sorted(p.name for p in root.iterdir())[:10]
        raise _layout_error(root, f"No identity directories (dev/mp4/idXXXXX or "
                                  f"test/mp4/idXXXXX) under {root}; it holds: "
                                  f"{', '.join(present)}.")
    return found


def validation_identities(dev: Sequence[str], fraction: float) -> list[str]:
    """The dev identities held out for validation: ``max(1, round(fraction * n))`` of the ``n``
    sorted ones (none when ``fraction`` is 0 or n < 2; never all of them), evenly spaced over
    the sorted list, so the choice is a pure function of the identity list."""
    n = len(dev)
    if fraction <= 0 or n < 2:
        return []
    k = min(n - 1, max(1, round(fraction * n)))
    return [dev[int((i + 0.5) * n / k)] for i in range(k)]


def identity_splits(found: dict[str, list[str]], fraction: float) -> dict[str, list[str]]:
    """Split name -> identity directory names (non-empty splits only)."""
    splits: dict[str, list[str]] = {}
    dev = found.get("dev", [])
    val = set(validation_identities(dev, fraction))
    if dev:
        splits["train"] = [i for i in dev if i not in val]
    if val:
        splits["validation"] = [i for i in dev if i in val]
    if found.get("test"):
        splits["test"] = list(found["test"])
    return splits


@dataclasses.dataclass(frozen=True)
class IdentityTask:
    """One identity of one split: its mp4 directory and (maybe absent) aac directory."""

    split: str
    part: str
    identity: str  # idXXXXX
    manual_dir: str


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One source file. ``m4a`` is the separate audio file when one exists, else ""."""

    split: str
    identity: str
    video_id: str
    utterance: str  # NNNNN
    mp4: str
    m4a: str
    rel: str  # path relative to the manual dir


def list_utterances(task: IdentityTask) -> list[Utterance]:
    """The utterances of one identity, sorted by (video_id, utterance). Runs on Beam workers."""
    root = epath.Path(task.manual_dir)
    mp4_dir = root / task.part / "mp4" / task.identity
    aac_dir = root / task.part / "aac" / task.identity
    m4as = set()
    if aac_dir.is_dir():
        m4as = {f"{v.name}/{f.name}" for v in aac_dir.iterdir() if v.is_dir()
                for f in v.glob("*.m4a")}
    out = []
    for video in sorted(p for p in mp4_dir.iterdir() if p.is_dir()):
        for f in sorted(video.glob("*.mp4")):
            stem = f.name[:-len(".mp4")]
            m4a = f"{video.name}/{stem}.m4a"
            out.append(Utterance(
                split=task.split, identity=task.identity, video_id=video.name, utterance=stem,
                mp4=str(f), m4a=str(aac_dir / m4a) if m4a in m4as else "",
                rel=f"{task.part}/mp4/{task.identity}/{video.name}/{f.name}"))
    return out


# -- one utterance -------------------------------------------------------------------------------

def _pcm16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


@dataclasses.dataclass(frozen=True)
class ClipMaker:
    """``utterance -> ([(key, example)], VideoRecord)``; picklable (Beam ships it to workers).
    Writes the skip record of a skipped (or quality-filtered) file under ``report_dir``.
    ``face_labels`` adds each clip's face-mesh ``motion`` and ``mouth_centre``."""

    resolution: int
    clip_frames: int
    quality_scorer: str
    quality_threshold: float
    report_dir: str
    face_labels: bool

    def _encode(self, frames: np.ndarray):
        """(L, R, R, 3) uint8 -> {"frames": JPEG bytes per frame, + the face labels}, or None
        when the quality filter refuses the clip."""
        from data_pipeline.synthtalk.parallel import encode_frames

        if self.quality_scorer:
            score = quality.get_scorer(self.quality_scorer)(frames)
            if score < self.quality_threshold:
                return None
        out = {"frames": encode_frames(frames, "jpeg")}
        if self.face_labels:
            out.update(face_labels.label_clip(frames))
        return out

    def __call__(self, utt: Utterance) -> tuple[list[tuple[str, dict[str, Any]]],
                                                report.VideoRecord]:
        record = report.VideoRecord(split=utt.split, path=utt.rel)
        examples = []
        try:
            clips = decode.decode_clips(utt.mp4, resolution=self.resolution,
                                        clip_frames=self.clip_frames, m4a=utt.m4a or None,
                                        clip_fn=self._encode)
        except decode.SkipVideo as e:
            record.reason, record.detail = e.reason, e.detail
        else:
            record.seconds = clips.seconds
            n = self.clip_frames * SAMPLES_PER_FRAME
            identity = int(utt.identity[2:])
            number = int(utt.utterance) if utt.utterance.isdigit() else -1
            for c, clip in enumerate(clips.frames):
                if clip is None:
                    record.rejected["quality"] = record.rejected.get("quality", 0) + 1
                    continue
                key = f"{utt.identity}/{utt.video_id}/{utt.utterance}/{c:04d}"
                examples.append((key, dict(
                    clip, audio=_pcm16(clips.audio[c * n:(c + 1) * n]),
                    identity=np.int32(identity), clip=np.int32(c), video_id=utt.video_id,
                    utterance=np.int32(number))))
            record.clips = len(examples)
        if record.noteworthy:
            record.log()
            report.write_record(self.report_dir, record)
        return examples, record


@dataclasses.dataclass(frozen=True)
class _BeamClips:
    """The Beam worker side of ``ClipMaker``: its record becomes Metrics counters."""

    maker: ClipMaker

    def __call__(self, utt: Utterance):
        from apache_beam.metrics.metric import Metrics

        examples, record = self.maker(utt)
        for name, value in record.counts().items():
            if value:
                Metrics.counter(report.NAMESPACE, name).inc(value)
        return examples


# -- builder -------------------------------------------------------------------------------------

class Voxceleb2(tfds.core.GeneratorBasedBuilder):
    """VoxCeleb2 face tracks as aligned 25 fps clips with 16 kHz audio (manual download)."""

    name = "voxceleb2"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Per-frame face-mesh motion labels (motion, mouth_centre)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [make_config(r) for r in RESOLUTIONS]
    DEFAULT_CONFIG_NAME = "res256"

    def __init__(self, *, use_beam: bool = False, file_format=None,
                 progress: Callable[[str, dict], None] | None = None, **kwargs):
        """``use_beam`` makes every split a Beam pipeline (runner and options come from
        ``download_config.beam_options``/``beam_runner``; default: the DirectRunner); a
        download config with Beam options or a runner also turns it on.
        ``file_format`` defaults to ArrayRecord (random access for grain). ``progress`` (plain
        builds) is called after each source file with (split, running counters)."""
        if use_beam:
            _import_beam()
        self._use_beam = use_beam
        self._progress = progress
        self._counts: collections.Counter = collections.Counter()
        self._beam_counts: dict[str, int] | None = None
        self._report_root: epath.Path | None = None
        self.summary: dict | None = None
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        t, r = c.clip_frames, c.resolution
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                **clip_features(t, r, "jpeg", identity_doc="the number of idXXXXX",
                                clip_doc="clip index within the utterance"),
                "video_id": tfds.features.Text(doc="YouTube id of the source video"),
                "utterance": tfds.features.Scalar(np.int32, doc="NNNNN of NNNNN.mp4"),
                **({"motion": tfds.features.Tensor(
                        shape=(t, MOTION_DIM), dtype=np.float32,
                        doc="face-mesh motion labels, SynthTalk's fields (face_labels.py)"),
                    "mouth_centre": tfds.features.Tensor(
                        shape=(t, 2), dtype=np.float32,
                        doc="inner-lip midpoint, image half-widths (x right, y down)")}
                   if c.face_labels else {}),
            }),
            supervised_keys=None,
            homepage="https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox2.html",
            citation="""@inproceedings{chung2018voxceleb2,
  title={VoxCeleb2: Deep Speaker Recognition},
  author={Chung, Joon Son and Nagrani, Arsha and Zisserman, Andrew},
  booktitle={Interspeech},
  year={2018}}""",
            metadata=tfds.core.MetadataDict(
                fps=FPS, sample_rate=SAMPLE_RATE, resolution=r, clip_frames=t,
                validation_fraction=c.validation_fraction, quality_scorer=c.quality_scorer,
                quality_threshold=c.quality_threshold, face_labels=c.face_labels),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError as e:  # TFDS: "does not exist or is empty"
            raise _layout_error(getattr(dl_manager, "_manual_dir", "(not set)"),
                                f"The manual directory is missing or empty ({e}).") from None
        c = self.builder_config
        splits = identity_splits(find_identities(manual_dir), c.validation_fraction)
        self._report_root = epath.Path(self.data_dir) / report.REPORT_DIR
        self.info.metadata["validation_identities"] = splits.get("validation", [])
        self.info.metadata["identities"] = {k: len(v) for k, v in splits.items()}
        maker = ClipMaker(c.resolution, c.clip_frames, c.quality_scorer, c.quality_threshold,
                          str(self._report_root), c.face_labels)
        part = {"train": "dev", "validation": "dev", "test": "test"}
        return {split: self._generate_examples(
                    split, [IdentityTask(split, part[split], i, str(manual_dir)) for i in ids],
                    maker)
                for split, ids in splits.items()}

    def _generate_examples(self, split: str, tasks: list[IdentityTask], maker: ClipMaker):
        if self._use_beam:
            beam = _import_beam()
            return (beam.Create(tasks)
                    | f"ShuffleIdentities_{split}" >> beam.Reshuffle()
                    | f"ListUtterances_{split}" >> beam.FlatMap(list_utterances)
                    | f"ShuffleUtterances_{split}" >> beam.Reshuffle()
                    | f"MakeClips_{split}" >> beam.FlatMap(_BeamClips(maker)))
        return self._plain_examples(split, tasks, maker)

    def _plain_examples(self, split: str, tasks: list[IdentityTask], maker: ClipMaker):
        written = 0
        split_counts: collections.Counter = collections.Counter()
        for task in tasks:
            for utt in list_utterances(task):
                examples, record = maker(utt)
                report.add_counts(self._counts, record.counts())
                report.add_counts(split_counts, record.counts())
                written += len(examples)
                if self._progress:
                    self._progress(split, dict(self._counts))
                yield from examples
        if not written:
            skipped = {k[len("skipped_videos_"):]: v for k, v in split_counts.items()
                       if k.startswith("skipped_videos_")}
            raise NoClipsError(
                f"No clip of split {split!r} survived: {split_counts.get('videos', 0)} files, "
                f"skipped: {skipped or 'none'}, clips refused by the quality filter: "
                f"{split_counts.get('skipped_clips_quality', 0)}. See the warnings above for "
                f"each file; fix or remove them, lower --quality-threshold, or shorten "
                f"--clip-frames.")

    def _process_pipeline_result(self, pipeline_result) -> None:
        from apache_beam.metrics.metric import MetricsFilter

        counts: collections.Counter = collections.Counter()
        query = pipeline_result.metrics().query(MetricsFilter().with_namespace(report.NAMESPACE))
        for counter in query["counters"]:
            value = counter.committed if counter.committed is not None else counter.attempted
            counts[counter.key.metric.name] += int(value or 0)
        self._beam_counts = dict(counts)

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        if download_config.beam_options is not None or download_config.beam_runner is not None:
            _import_beam()
            self._use_beam = True  # e.g. `tfds build --beam_pipeline_options=...`
        self._counts.clear()
        self._beam_counts = None
        t0 = time.time()
        super()._download_and_prepare(dl_manager, download_config)
        counts = self._counts if not self._use_beam else (self._beam_counts or {})
        splits = {k: v.num_examples for k, v in self.info.splits.items()}
        summary = report.summarize(counts, report.read_records(self._report_root), splits,
                                   clip_frames=self.builder_config.clip_frames)
        summary["build_seconds"] = time.time() - t0
        summary["beam"] = self._use_beam
        summary["config"] = self.builder_config.name
        self.info.metadata["build"] = {k: v for k, v in summary.items()
                                       if k != "skipped_files"}
        (epath.Path(self.data_dir) / report.REPORT_FILE).write_text(
            json.dumps(summary, indent=2, sort_keys=True))
        self.summary = summary


def read_build_report(dataset_dir: epath.PathLike) -> dict | None:
    """The ``build_report.json`` of a prepared voxceleb2 dataset directory (None if absent)."""
    path = epath.Path(dataset_dir) / report.REPORT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def build_voxceleb2(manual_dir: str, config: str | Voxceleb2Config = "res256", *,
                    data_dir: str | None = None, beam_flags: Sequence[str] | None = None,
                    overwrite: bool = False, file_format: str | None = None,
                    progress: Callable[[str, dict], None] | None = None) -> tuple[str, dict]:
    """Build (or reuse) ``voxceleb2/<config>`` from the download in ``manual_dir``.

    ``beam_flags`` None builds without Beam; a list (possibly empty: the DirectRunner in this
    process) builds with a Beam pipeline with those options, e.g. ``["--runner=DataflowRunner",
    "--project=...", "--region=...", "--temp_location=gs://..."]``. Returns (dataset directory,
    summary) where the summary is ``report.summarize``'s (clips per split, skipped files and
    why, hours) plus ``build_seconds``; for a reused dataset it is the stored report.
    Raises ManualDirError (printing the expected layout) for a missing or empty manual dir.
    """
    from data_pipeline.loader import default_data_dir

    find_identities(manual_dir)  # fail fast, before TFDS creates anything
    data_dir = data_dir or default_data_dir()
    registered = {c.name for c in Voxceleb2.BUILDER_CONFIGS}
    if isinstance(config, Voxceleb2Config) and config.name in registered:
        config = config.name
    builder = Voxceleb2(config=config, data_dir=data_dir, use_beam=beam_flags is not None,
                        file_format=file_format, progress=progress)
    if builder.is_prepared() and not overwrite:
        return builder.data_dir, dict(read_build_report(builder.data_dir) or {}, reused=True)
    mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    kwargs = dict(download_mode=mode, manual_dir=manual_dir)
    if beam_flags is not None:
        beam = _import_beam()
        kwargs["beam_options"] = beam.options.pipeline_options.PipelineOptions(
            flags=list(beam_flags))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**kwargs))
    logging.info("voxceleb2/%s ready in %s", builder.builder_config.name, builder.data_dir)
    return builder.data_dir, builder.summary
