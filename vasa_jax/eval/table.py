"""The paper-style evaluation table (VASA-1 Tables 1, 2 and 5): one row per clip set.

Rows: "Real video" first (the real clips measured by the same instruments, the reference the
paper matches or beats), then each generated set (system or ablation). Columns:

  sync conf / sync dist   SyncNet LSE-C (higher is better) / LSE-D (lower), Wav2Lip's way
                          (``vasa_jax.instruments.syncnet``)
  AV offset / AV conf     mouth track read by the SynthTalk probe against the ground-truth track
                          of the real clip: lag of the cross-correlation peak within +-15 frames
                          (0 = in sync) and peak minus median; ``jaw r``: their Pearson r
  CAPP                    audio-pose alignment (``vasa_jax.instruments.capp``) of the pose read off the
                          frames and the clip's speech
  ΔP                      mean abs frame-to-frame change of the read yaw/pitch/roll (rad/frame),
                          and its ratio to the real row's
  FVD                     Fréchet video distance to the real set (I3D, ``vasa_jax.eval.fvd``);
                          on the Real row: one half of the real clips against the other
                          (``split_half_fvd``), the floor sampling alone gives
  gaze err / emotion acc / distance err
                          control accuracy: the read gaze against the clip's target (degrees),
                          the read emotion class against the target, and the distance implied
                          by the read head scale (SynthTalk's ``distance_to_scale`` inverted)
                          against the target (normalised units, 0 = close, 1 = far)
  identity LPIPS          LPIPS of every frame against the photo (the real clip's first frame):
                          how far the person drifts; the real row gives the natural level

Pose, mouth, gaze and emotion are read by the SynthTalk probe when one is given (SynthTalk-like
frames), else by mediapipe's face mesh (``vasa_jax.eval.face_landmarks``: pose and mouth only).
Every instrument is optional; a column without its instrument reads "n/a", and the held-out
accuracy of each instrument used is written under the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from data_pipeline.synthtalk.motion import FIELD, distance_to_scale
from vasa_jax.constants import FPS
from vasa_jax.eval import motion_metrics as mm
from vasa_jax.eval.clip_set import Clip

POSE = slice(FIELD["yaw"], FIELD["roll"] + 1)
GAZE = slice(FIELD["gaze_x"], FIELD["gaze_y"] + 1)
JAW, SCALE = FIELD["jaw_open"], FIELD["scale"]
AUDIO_OF = "audio_of"  # sidecar key: the clip whose speech this clip carries (default: its own)
LPIPS_STRIDE = 5  # identity LPIPS on every 5th frame

# (key, header, format); the paper's columns first.
COLUMNS = (
    ("lse_c", "sync conf ↑", "{:.2f}"), ("lse_d", "sync dist ↓", "{:.2f}"),
    ("av_offset", "AV offset", "{:+.0f}"), ("av_confidence", "AV conf ↑", "{:.3f}"),
    ("jaw_r", "jaw r ↑", "{:.3f}"), ("capp", "CAPP ↑", "{:.3f}"),
    ("delta_p", "ΔP", "{:.4f}"), ("delta_p_ratio", "ΔP / real", "{:.2f}"),
    ("fvd", "FVD ↓", "{:.1f}"), ("gaze_error_deg", "gaze err (°) ↓", "{:.1f}"),
    ("emotion_accuracy", "emotion acc ↑", "{:.2f}"), ("distance_error", "distance err ↓", "{:.3f}"),
    ("identity_lpips", "identity LPIPS", "{:.3f}"),
)


def scale_to_distance(scale: float) -> float:
    """The normalised distance whose nominal head scale is ``scale`` (``distance_to_scale``
    is affine, so two points invert it)."""
    s0, s1 = distance_to_scale(0.0), distance_to_scale(1.0)
    return float((scale - s0) / (s1 - s0))


@dataclasses.dataclass
class Instruments:
    """The measuring networks; any may be None (its columns read n/a).

    probe: ``synthtalk_probe.Probe``; syncnet: ``syncnet.SyncNet`` (trained, with ``heldout``);
    capp: ``capp.CappNetwork`` (with ``heldout``); i3d: ``fvd.I3DFeatures``; lpips: ``image_metrics.LPIPS``;
    landmarks: read pose and mouth with mediapipe when there is no probe."""

    probe: Any = None
    syncnet: Any = None
    capp: Any = None
    i3d: Any = None
    lpips: Any = None
    landmarks: bool = True
    fvd_clip_len: int = 16
    fvd_stride: int = 16

    @classmethod
    def load(cls, *, probe: str | None = None, syncnet: str | None = None,
             syncnet_torch: str | None = None, capp: str | None = None, fvd: bool = True,
             lpips: bool = True, fvd_clip_len: int = 16, fvd_stride: int = 16
             ) -> "Instruments":
        """Load from workdirs (None: leave that instrument out). ``syncnet_torch``: the original
        SyncNet's PyTorch weights (syncnet_v2.model) instead of a trained ``syncnet`` workdir."""
        inst = cls(fvd_clip_len=fvd_clip_len, fvd_stride=fvd_stride)
        if probe:
            from vasa_jax.instruments.load import load_probe

            inst.probe = load_probe(probe)
        if syncnet and syncnet_torch:
            raise ValueError("Give a trained SyncNet workdir or the original PyTorch weights, "
                             "not both.")
        if syncnet:
            from vasa_jax.instruments.load import load_syncnet

            inst.syncnet = load_syncnet(syncnet)
        if syncnet_torch:
            from vasa_jax.instruments.syncnet import as_instrument
            from vasa_jax.instruments.syncnet_convert import load_torch_weights

            inst.syncnet = as_instrument(load_torch_weights(syncnet_torch))
        if capp:
            from vasa_jax.instruments.load import load_capp

            inst.capp = load_capp(capp)
        if fvd:
            from vasa_jax.eval.fvd import I3DFeatures

            inst.i3d = I3DFeatures()
        if lpips:
            from vasa_jax.eval.image_metrics import LPIPS

            inst.lpips = LPIPS()
        return inst

    def accuracies(self) -> dict[str, dict[str, Any]]:
        """Each loaded instrument's held-out accuracy, for the table's footnote."""
        out = {}
        for name in ("probe", "syncnet", "capp"):
            inst = getattr(self, name)
            if inst is not None:
                out[name] = dict(getattr(inst, "heldout", {}) or {})
        return out


@dataclasses.dataclass
class ClipReading:
    """What the instruments read off one clip. motion: (T, 12) probe reading or None; pose
    (T, 3) radians; mouth (T,) aperture track; emotion: majority class or None."""

    name: str
    pose: np.ndarray | None = None
    mouth: np.ndarray | None = None
    motion: np.ndarray | None = None
    emotion: int | None = None
    sync: dict[str, float] | None = None
    capp: float | None = None
    identity_lpips: float | None = None
    i3d: np.ndarray | None = None  # (n_clips, F) I3D features of this clip


def read_clip_with(inst: Instruments, clip: Clip, photo: np.ndarray | None = None, *,
                   same_frames: ClipReading | None = None) -> ClipReading:
    """Run every available instrument on ``clip``. ``photo`` (H, W, 3): the source image for
    identity LPIPS (default: the clip's own first frame). ``same_frames``: the reading of a
    clip with identical frames (only the audio differs): its frame-only readings are reused and
    only the audio-dependent ones (sync, CAPP) are measured again."""
    if same_frames is not None:
        r = dataclasses.replace(same_frames, name=clip.name)
        r.sync, r.capp = _sync(inst, clip), _capp(inst, clip, r.pose)
        return r
    r = ClipReading(clip.name)
    if inst.probe is not None:
        out = inst.probe.predict(clip.frames)
        r.motion = out["motion"]
        r.pose, r.mouth = r.motion[:, POSE], r.motion[:, JAW]
        r.emotion = int(np.bincount(out["emotion"]).argmax())
    elif inst.landmarks:
        from vasa_jax.eval.face_landmarks import measure_video
        from vasa_jax.media.errors import InputError

        try:
            m = measure_video(clip.frames, FPS, name=clip.name)
            r.pose = np.stack([m["yaw"], m["pitch"], m["roll"]], -1)
            r.mouth = np.asarray(m["mouth"])
        except InputError:  # no face in any frame: pose and mouth columns read n/a
            pass
    r.sync, r.capp = _sync(inst, clip), _capp(inst, clip, r.pose)
    if inst.lpips is not None:
        ref = clip.frames[0] if photo is None else photo
        frames = clip.frames[::LPIPS_STRIDE]
        if ref.shape != frames.shape[1:]:
            from vasa_jax.media.video_io import resize_frames

            ref = resize_frames(ref[None], frames.shape[1])[0]
        d = inst.lpips(frames, np.broadcast_to(ref, frames.shape))
        r.identity_lpips = float(np.mean(d))
    if inst.i3d is not None:
        from vasa_jax.eval.fvd import clips_from_videos

        if len(clip.frames) >= inst.fvd_clip_len:
            r.i3d = np.asarray(inst.i3d(clips_from_videos(
                [clip.frames], inst.fvd_clip_len, inst.fvd_stride)))
    return r


def _sync(inst: Instruments, clip: Clip) -> dict[str, float] | None:
    if inst.syncnet is None:
        return None
    from vasa_jax.instruments.syncnet import sync_scores

    s = sync_scores(inst.syncnet, clip.frames, clip.audio)
    return {k: float(s[k]) for k in ("lse_c", "lse_d", "offset")}


def _capp(inst: Instruments, clip: Clip, pose: np.ndarray | None) -> float | None:
    if inst.capp is None or pose is None:
        return None
    from vasa_jax.instruments.capp import capp_score

    return float(capp_score(inst.capp, np.nan_to_num(pose), clip.audio))


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def summarise(readings: Sequence[ClipReading], clips: Sequence[Clip],
              references: Sequence[Clip], *, real_features: np.ndarray | None = None,
              real_delta_p: float | None = None, max_lag: int = 15,
              speech_references: Sequence[Clip] | None = None) -> dict[str, float]:
    """One table row from the readings of a set's clips. ``references``: the real clip each was
    made from (targets); ``speech_references``: the real clip whose speech each carries (its
    ground-truth mouth track is what the lips should follow; default ``references``);
    ``real_features``: the real set's I3D features."""
    row: dict[str, float] = {k: math.nan for k, _, _ in COLUMNS}
    row["num_clips"] = float(len(readings))
    if all(r.sync for r in readings):
        row["lse_c"] = _mean(r.sync["lse_c"] for r in readings)
        row["lse_d"] = _mean(r.sync["lse_d"] for r in readings)
        row["syncnet_offset_abs"] = _mean(abs(r.sync["offset"]) for r in readings)
    truth = [ref.motion for ref in (speech_references or references)]
    have_truth = all(t is not None for t in truth)
    if have_truth and all(r.mouth is not None for r in readings):
        gen = [r.mouth[:len(t)] for r, t in zip(readings, truth)]
        ref = [t[:len(g), JAW] for g, t in zip(gen, truth)]
        offset, conf, _ = mm.av_offset(gen, ref, max_lag)
        row["av_offset"], row["av_confidence"] = float(offset), conf
        row["jaw_r"] = _mean(mm.pearson(g, t) for g, t in zip(gen, ref))
    if all(r.capp is not None for r in readings):
        row["capp"] = _mean(r.capp for r in readings)
    if all(r.pose is not None for r in readings):
        # ΔP over consecutive frames where the pose was read (NaN: no face in that frame)
        row["delta_p"] = _mean(float(np.nanmean(np.abs(np.diff(r.pose, axis=0))))
                               for r in readings)
        if real_delta_p:
            row["delta_p_ratio"] = row["delta_p"] / real_delta_p
    if real_features is not None and all(r.i3d is not None for r in readings):
        from vasa_jax.eval.fvd import frechet_distance

        row["fvd"] = float(frechet_distance(real_features, np.concatenate([r.i3d for r in readings])))
    if all(r.motion is not None for r in readings):
        targets = [ref.meta for ref in references]
        if all("gaze" in t for t in targets):
            row["gaze_error_deg"] = _mean(mm.gaze_error_degrees(r.motion[:, GAZE], t["gaze"])
                                          for r, t in zip(readings, targets))
        if all("emotion" in t for t in targets):
            row["emotion_accuracy"] = _mean(float(r.emotion == t["emotion"])
                                            for r, t in zip(readings, targets))
        if all("distance" in t for t in targets):
            row["distance_error"] = _mean(
                abs(scale_to_distance(r.motion[:, SCALE].mean()) - t["distance"])
                for r, t in zip(readings, targets))
    if all(r.identity_lpips is not None for r in readings):
        row["identity_lpips"] = _mean(r.identity_lpips for r in readings)
    return row


@dataclasses.dataclass
class SetResult:
    """A table row and the per-clip readings behind it."""

    row: dict[str, float]
    readings: list[ClipReading]
    chance: bool = False  # a chance reference (audio moved across clips), not a system


def evaluate_sets(real: Sequence[Clip], generated: Mapping[str, Sequence[Clip]],
                  inst: Instruments, *, progress=None) -> dict[str, SetResult]:
    """The table: "Real video" then each generated set (clips matched to ``real`` by name)."""
    by_name = {c.name: c for c in real}
    index = {c.name: i for i, c in enumerate(real)}
    say = progress or (lambda msg: None)
    say(f"Real video: {len(real)} clips")
    real_readings = [read_clip_with(inst, c) for c in real]
    feats = None
    if inst.i3d is not None and all(r.i3d is not None for r in real_readings):
        feats = np.concatenate([r.i3d for r in real_readings])
    real_row = summarise(real_readings, real, real, real_features=feats)
    results = {"Real video": SetResult(real_row, real_readings)}
    real_row["delta_p_ratio"] = 1.0 if np.isfinite(real_row["delta_p"]) else math.nan
    real_row["fvd"] = split_half_fvd(real_readings)
    for name, clips in generated.items():
        say(f"{name}: {len(clips)} clips")
        refs = [by_name[c.name] for c in clips]
        speech = [by_name[c.meta.get(AUDIO_OF, c.name)] for c in clips]
        readings = [read_clip_with(inst, c, photo=ref.frames[0],
                                   same_frames=_same_frames(c, ref, real_readings[index[c.name]]))
                    for c, ref in zip(clips, refs)]
        results[name] = SetResult(summarise(readings, clips, refs, real_features=feats,
                                            real_delta_p=real_row["delta_p"],
                                            speech_references=speech), readings,
                                  chance=any(AUDIO_OF in c.meta for c in clips))
        if results[name].chance:
            results[name].row["fvd"] = math.nan  # the real frames again: no video to judge
    return results


def split_half_fvd(readings: Sequence[ClipReading]) -> float:
    """The Real row's FVD: the first half of the real clips against the second half (by clip,
    so no video is on both sides). FVD of a set against itself is 0 by definition; this is
    the floor that sampling the same distribution gives at half the clip count (FVD is biased
    upwards at small counts, so it overstates the floor at the full count)."""
    feats = [r.i3d for r in readings]
    if len(feats) < 4 or any(f is None for f in feats):
        return math.nan
    from vasa_jax.eval.fvd import frechet_distance

    half = len(feats) // 2
    return float(frechet_distance(np.concatenate(feats[:half]), np.concatenate(feats[half:])))


def _same_frames(clip: Clip, ref: Clip, reading: ClipReading) -> ClipReading | None:
    """``reading`` (of ``ref``) when ``clip`` shows exactly ``ref``'s frames (a chance row)."""
    if clip.frames is ref.frames or (clip.frames.shape == ref.frames.shape
                                     and np.array_equal(clip.frames, ref.frames)):
        return reading
    return None


def shuffled_audio(clips: Sequence[Clip], seed: int = 0) -> list[Clip]:
    """The clips with their audio moved to another clip (a derangement): the chance reference
    for the sync and audio-pose columns. Names (and so references) stay with the frames."""
    n = len(clips)
    if n < 2:
        raise ValueError("Shuffling audio across clips needs at least two clips.")
    perm = np.random.default_rng(seed).permutation(n)
    order = np.empty(n, int)
    order[perm] = np.roll(perm, 1)  # clip perm[i] takes the audio of perm[i - 1]: never its own
    out = []
    for i, c in enumerate(clips):
        a = clips[order[i]].audio
        a = np.pad(a[:len(c.audio)], (0, max(0, len(c.audio) - len(a))))
        out.append(Clip(c.name, c.frames, a, dict(c.meta, **{AUDIO_OF: clips[order[i]].name})))
    return out


# -- reports -----------------------------------------------------------------------------------

def _fmt(fmt: str, v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else fmt.format(v)


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Columns that are n/a in every row are left out."""
    cols = [c for c in COLUMNS if any(np.isfinite(r.get(c[0], math.nan)) for r in rows.values())]
    lines = ["| system | " + " | ".join(h for _, h, _ in cols) + " | clips |",
             "|---|" + "---|" * (len(cols) + 1)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(f, r.get(k, math.nan)) for k, _, f in cols)
                     + f" | {int(r.get('num_clips', 0))} |")
    return "\n".join(lines)


def accuracy_lines(acc: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The instruments' held-out accuracy, one line each."""
    keys = {"probe": ("r/jaw_open", "r/lip_width", "r/yaw", "r/pitch", "r/roll", "r/scale",
                      "r/gaze_x", "r/gaze_y", "emotion_accuracy_clip"),
            "syncnet": ("offset_accuracy", "lse_c", "lse_d", "shuffled/offset_accuracy",
                        "shuffled/lse_c", "shuffled/lse_d", "chance_offset_accuracy"),
            "capp": ("matched_mean", "shuffled_mean", "offdiag_mean", "top1", "top5",
                     "chance_top1")}
    out = []
    for name, h in acc.items():
        parts = [f"{k} {h[k]:.3f}" if isinstance(h.get(k), float) else f"{k} {h[k]}"
                 for k in keys.get(name, ()) if k in h]
        where = h.get("split", "test")
        out.append(f"- {name} (held-out identities, {where} split): " + ", ".join(parts))
    return out


def _to_json(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


NOTES = (
    "Real video: the real clips measured by the same instruments (the reference to match). Its "
    "FVD is one half of the real clips against the other half: the floor that sampling alone "
    "gives (at half the clip count, so FVD's small-sample bias makes it an overestimate).",
    "Real video, audio shuffled (chance): the real frames with another clip's speech, so the "
    "sync, AV and CAPP columns show chance; its frame-only columns equal the real row's.",
    "AV offset / AV conf / jaw r: the mouth read by the probe against the ground-truth mouth of "
    "the speech (SynthTalk only). Sync conf / dist: SyncNet's LSE-C / LSE-D (the trained "
    "instrument's scale, not comparable to published SyncNet figures).",
    "A column depends on its instrument's held-out accuracy below: where that is at chance "
    "(e.g. the probe's gaze at 64 px), the column carries no information.",
)


def render_markdown(meta: Mapping[str, Any], rows: Mapping[str, Mapping[str, float]],
                    accuracies: Mapping[str, Mapping[str, Any]]) -> str:
    """The report's Markdown (also re-rendered from a saved JSON: ``render_markdown(d["meta"],
    d["rows"], d["instruments"])``)."""
    rows = {k: {m: (math.nan if v is None else v) for m, v in r.items()} for k, r in rows.items()}
    md = [f"# {meta.get('title', 'Evaluation')}", ""]
    md += [f"- {k}: {v}" for k, v in meta.items() if k != "title"]
    md += ["", markdown_table(rows), ""] + [f"- {n}" for n in NOTES]
    md += ["", "Instruments (accuracy on people they never saw):"]
    return "\n".join(md + accuracy_lines(accuracies) + [""])


def write_report(results: Mapping[str, SetResult], out_dir: str, *, meta: Mapping[str, Any],
                 accuracies: Mapping[str, Mapping[str, Any]], stem: str = "eval",
                 real: Sequence[Clip] = (), plots: bool = True) -> dict[str, str]:
    """``<stem>.md``, ``<stem>.json`` and (with ``plots``) ``<stem>_mouth_tracks.png`` and
    ``<stem>_bars.png`` in ``out_dir``, each written atomically; returns the paths."""
    from vasa_jax.atomic import atomic_path

    os.makedirs(out_dir, exist_ok=True)
    rows = {k: v.row for k, v in results.items()}
    paths = {"md": os.path.join(out_dir, f"{stem}.md"), "json": os.path.join(out_dir, f"{stem}.json")}
    with atomic_path(paths["md"]) as tmp:
        with open(tmp, "w") as f:
            f.write(render_markdown(meta, rows, accuracies))
    data = {"meta": dict(meta), "instruments": accuracies,
            "rows": {k: {m: _to_json(v) for m, v in r.items()} for k, r in rows.items()},
            "per_clip": {k: [{"name": c.name, "capp": c.capp, "sync": c.sync,
                              "identity_lpips": c.identity_lpips, "emotion": c.emotion}
                             for c in v.readings] for k, v in results.items()}}
    with atomic_path(paths["json"]) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=float)
    if plots:
        paths.update(_plots(results, out_dir, stem, real))
    return paths


def _plots(results: Mapping[str, SetResult], out_dir: str, stem: str,
           real: Sequence[Clip]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vasa_jax.atomic import atomic_path

    out = {}
    truth = {c.name: c.motion for c in real if c.motion is not None}
    names = [r.name for r in next(iter(results.values())).readings][:3]
    if truth and names:
        fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.4 * len(names)), squeeze=False)
        for ax, name in zip(axes[:, 0], names):
            if name in truth:
                ax.plot(truth[name][:, JAW], "k", lw=2, label="ground truth")
            for system, res in results.items():
                if res.chance:
                    continue  # the frames of the real clips again
                rd = next((r for r in res.readings if r.name == name), None)
                if rd is not None and rd.mouth is not None:
                    ax.plot(rd.mouth, lw=1, label=system)
            ax.set_title(f"{name}: jaw_open (read by the probe)", fontsize=9)
            ax.set_xlabel("frame")
        axes[0, 0].legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        out["mouth_tracks"] = os.path.join(out_dir, f"{stem}_mouth_tracks.png")
        with atomic_path(out["mouth_tracks"], suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
    rows = {k: v.row for k, v in results.items()}
    cols = [c for c in COLUMNS if any(np.isfinite(r.get(c[0], math.nan)) for r in rows.values())]
    if cols:
        fig, axes = plt.subplots(1, len(cols), figsize=(2.2 * len(cols), 3.2), squeeze=False)
        for ax, (key, head, _) in zip(axes[0], cols):
            vals = [rows[s].get(key, math.nan) for s in rows]
            ax.bar(range(len(vals)), np.nan_to_num(vals), color=[f"C{i}" for i in range(len(vals))])
            ax.set_title(head, fontsize=8)
            ax.set_xticks(range(len(vals)))
            ax.set_xticklabels([str(i) for i in range(len(vals))], fontsize=7)
        fig.suptitle("  ".join(f"{i}: {s}" for i, s in enumerate(rows)), fontsize=7)
        fig.tight_layout()
        out["bars"] = os.path.join(out_dir, f"{stem}_bars.png")
        with atomic_path(out["bars"], suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
    return out
