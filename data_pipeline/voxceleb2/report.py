"""What a ``voxceleb2`` build did: per-file records, counters, and the summary.

Each source mp4 gives a ``VideoRecord``. Its numbers become counters (``record.counts()``):
summed in the driver by a plain build, Beam ``Metrics`` counters in a Beam build (workers cannot
return values to the driver; the runner aggregates counters and the builder queries them when
the pipeline has finished). Every file that was skipped, or lost clips to the quality filter,
also gets a small JSON record written (idempotently: a deterministic name and content, written
to a temporary name and renamed, so a retried Beam bundle rewrites the same bytes) under
``<dataset dir>/build_report/skipped/<split>/``. ``summarize`` joins both into the summary that
lands in ``<dataset dir>/build_report.json`` and in the dataset's metadata (``build``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import uuid
from typing import Iterable

from absl import logging
from etils import epath

from data_pipeline.voxceleb2.decode import REASONS, VIDEO_REASONS
from vasa_jax.constants import FPS

NAMESPACE = "voxceleb2"
REPORT_DIR = "build_report"  # inside the dataset's version directory
REPORT_FILE = "build_report.json"
# Counter names: files seen, files that gave clips, clips written, decoded video (ms), clips the
# quality filter refused, and files skipped per reason.
COUNTERS = ("videos", "videos_with_clips", "clips_written", "video_ms", "skipped_clips_quality",
            *(f"skipped_videos_{r}" for r in VIDEO_REASONS))


@dataclasses.dataclass
class VideoRecord:
    """What one source file gave. ``path`` is relative to the manual dir."""

    split: str
    path: str
    clips: int = 0
    seconds: float = 0.0
    reason: str | None = None  # one of VIDEO_REASONS when the whole file was skipped
    detail: str = ""
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)  # clip reason -> count

    def counts(self) -> dict[str, int]:
        c = {"videos": 1, "clips_written": self.clips,
             "video_ms": int(round(self.seconds * 1000)),
             "videos_with_clips": int(self.clips > 0)}
        if self.reason:
            c[f"skipped_videos_{self.reason}"] = 1
        for r, n in self.rejected.items():
            c[f"skipped_clips_{r}"] = n
        return c

    @property
    def noteworthy(self) -> bool:
        return bool(self.reason or any(self.rejected.values()))

    def log(self) -> None:
        if self.reason:
            logging.warning("voxceleb2: skipped %s (%s): %s", self.path, self.reason, self.detail)
        for r, n in self.rejected.items():
            if n:
                logging.warning("voxceleb2: %s: %d clip(s) refused (%s)", self.path, n, r)


def record_path(report_root: epath.PathLike, record: VideoRecord) -> epath.Path:
    name = record.path.replace("/", "__")
    return epath.Path(report_root) / "skipped" / record.split / f"{name}.json"


def write_record(report_root: epath.PathLike, record: VideoRecord) -> None:
    """Write ``record`` as JSON under ``report_root`` (idempotent; any filesystem epath knows)."""
    path = record_path(report_root, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(dataclasses.asdict(record), sort_keys=True))
    tmp.replace(path)


def read_records(report_root: epath.PathLike) -> list[dict]:
    """Every record written under ``report_root`` (sorted by split and path)."""
    root = epath.Path(report_root) / "skipped"
    if not root.exists():
        return []
    out = [json.loads(p.read_text()) for p in root.glob("*/*.json")]
    return sorted(out, key=lambda r: (r["split"], r["path"]))


def add_counts(total: collections.Counter, counts: dict[str, int]) -> None:
    total.update({k: v for k, v in counts.items() if v})


def summarize(counts: dict[str, int], records: Iterable[dict], splits: dict[str, int], *,
              clip_frames: int) -> dict:
    """The build summary: clips per split, files seen/used, skips per reason (with the files),
    hours of decoded video and of written clips."""
    skipped: dict[str, list] = {r: [] for r in REASONS}
    for rec in records:
        if rec.get("reason"):
            skipped[rec["reason"]].append({"path": rec["path"], "detail": rec.get("detail", "")})
        for r, n in (rec.get("rejected") or {}).items():
            if n:
                skipped[r].append({"path": rec["path"], "clips": n})
    clips = int(sum(splits.values()))
    return {
        "clips_written": clips,
        "splits": dict(splits),
        "videos": int(counts.get("videos", 0)),
        "videos_with_clips": int(counts.get("videos_with_clips", 0)),
        "skipped_videos": {r: int(counts.get(f"skipped_videos_{r}", 0)) for r in VIDEO_REASONS},
        "skipped_clips": {"quality": int(counts.get("skipped_clips_quality", 0))},
        "skipped_files": {r: v for r, v in skipped.items() if v},
        "hours_of_video": counts.get("video_ms", 0) / 3.6e6,
        "hours_written": clips * clip_frames / FPS / 3600.0,
    }


def format_summary(summary: dict, max_files: int = 10) -> str:
    """Human-readable lines of ``summarize``'s output."""
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    lines = [f"Clips written: {summary['clips_written']} ({splits}); "
             f"{summary['hours_written']:.3f} h of clips from {summary['hours_of_video']:.3f} h "
             f"of decoded video in {summary['videos']} files "
             f"({summary['videos_with_clips']} gave clips)."]
    skipped = {r: n for r, n in summary["skipped_videos"].items() if n}
    if skipped or summary["skipped_clips"]["quality"]:
        why = ", ".join(f"{r} {n}" for r, n in skipped.items())
        lines.append(f"Skipped files: {sum(skipped.values())}" + (f" ({why})" if why else "")
                     + f"; clips refused by the quality filter: "
                       f"{summary['skipped_clips']['quality']}.")
        for reason, files in summary["skipped_files"].items():
            for f in files[:max_files]:
                extra = f"{f['clips']} clip(s)" if "clips" in f else f.get("detail", "")
                lines.append(f"  {reason}: {f['path']}  {extra}")
            if len(files) > max_files:
                lines.append(f"  {reason}: ... and {len(files) - max_files} more")
    else:
        lines.append("Skipped: nothing.")
    return "\n".join(lines)
