"""Comparing two training-loss curves (our JAX run against a PyTorch run).

Used by ``launch/compare_convergence.py``; everything here works on plain (steps, values) arrays,
so it serves any pair of runs: ours, or a JAX run against someone else's PyTorch logs.

- Reading logs: TensorBoard event files (one file, or a run directory) written by TensorFlow /
  clu (tensor summaries) or by ``torch.utils.tensorboard`` / tensorboardX (``simple_value``), and
  CSV files with a step column and a value column (also TensorBoard's own "Wall time,Step,Value"
  CSV export). Errors (missing or unreadable file, no such tag/column) raise ``LogError``.
- Curve math, all in step units so that sparsely logged curves compare fairly:
  ``smooth`` (debiased exponential moving average: TensorBoard's smoothing, generalised to
  uneven step gaps), ``steps_to_level``, ``align`` (interpolate one curve onto the other's
  steps), ``divergence``, and ``compare`` which gathers them into one JSON-ready summary.
- Output: ``plot_curves`` (PNG: both loss curves and their relative difference) and
  ``write_json``; both are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from vasa_jax.atomic import atomic_path

EVENT_GLOB = "events.out.tfevents*"


class LogError(ValueError):
    """A training log could not be read, or lacks the requested tag/column."""


@dataclasses.dataclass(frozen=True)
class Curve:
    """One scalar over training.

    steps: (N,) int64, strictly increasing.
    values: (N,) float64, finite.
    name: a label for plots and JSON (e.g. ``jax``, ``torch``).
    """

    steps: np.ndarray
    values: np.ndarray
    name: str = ""

    def __len__(self) -> int:
        return len(self.steps)


def make_curve(steps: Sequence[float], values: Sequence[float], name: str = "") -> Curve:
    """Build a ``Curve`` from (N,) steps and (N,) values in any order: sorted by step, a step
    logged more than once keeps its last value (a restarted run overwrites), non-finite values
    are dropped. Raises ``LogError`` if nothing is left."""
    steps = np.asarray(steps, dtype=np.float64).reshape(-1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if steps.shape != values.shape:
        raise ValueError(f"steps {steps.shape} and values {values.shape} differ in length.")
    ok = np.isfinite(values) & np.isfinite(steps)
    steps, values = steps[ok].astype(np.int64), values[ok]
    # Stable sort by step; keep the last occurrence of each step.
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    last = np.ones(len(steps), bool)
    last[:-1] = steps[1:] != steps[:-1]
    steps, values = steps[last], values[last]
    if len(steps) == 0:
        raise LogError(f"The curve {name!r} has no finite values.")
    return Curve(steps, values, name)


# -- reading logs ------------------------------------------------------------------------------

def event_files(path: str) -> list[str]:
    """The TensorBoard event files of one run: ``path`` itself if it is a file, else the event
    files directly in the directory ``path``, else those of the ONE directory below it that has
    any (several such directories are several runs: ``LogError`` naming them)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise LogError(f"No log file or directory at {path!r}.")
    files = sorted(glob.glob(os.path.join(path, EVENT_GLOB)))
    if files:
        return files
    files = sorted(glob.glob(os.path.join(path, "**", EVENT_GLOB), recursive=True))
    dirs = sorted({os.path.dirname(f) for f in files})
    if not files:
        raise LogError(f"No TensorBoard event files ({EVENT_GLOB}) in {path!r}.")
    if len(dirs) > 1:
        raise LogError(f"{path!r} holds several TensorBoard runs ({', '.join(dirs)}); pass the "
                       "directory of one of them.")
    return files


def _scalar_of(value) -> float | None:
    """The float in one ``Summary.Value`` if it is a scalar (``simple_value`` or a one-element
    tensor of the scalars plugin / no plugin), else None."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return float(value.simple_value)
    if kind == "tensor":
        plugin = value.metadata.plugin_data.plugin_name
        if plugin not in ("", "scalars"):
            return None
        from tensorboard.util import tensor_util

        arr = tensor_util.make_ndarray(value.tensor)
        if arr.size != 1 or arr.dtype.kind not in "fiu":
            return None
        return float(arr.reshape(()))
    return None


def _read_events(files: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the event files (file order)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in files:
        try:
            for raw in RawEventFileLoader(f).Load():
                event = event_pb2.Event.FromString(raw)
                if not event.HasField("summary"):
                    continue
                for v in event.summary.value:
                    x = _scalar_of(v)
                    if x is not None:
                        out.setdefault(v.tag, []).append((int(event.step), x))
        except LogError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoding failure is "not a readable log"
            raise LogError(f"{f!r} is not a readable TensorBoard event file ({e}).") from e
    return out


def scalar_tags(path: str) -> list[str]:
    """The scalar tags in a TensorBoard run (file or directory), sorted."""
    return sorted(_read_events(event_files(path)))


def read_tensorboard(path: str, tag: str, name: str = "") -> Curve:
    """The scalar ``tag`` of a TensorBoard run (an event file or a run directory) as a Curve."""
    files = event_files(path)
    events = _read_events(files)
    if tag not in events:
        tags = sorted(events)
        raise LogError(f"No scalar {tag!r} in the TensorBoard log {path!r}; its scalar tags are "
                       f"{tags if tags else 'none'}. Pick one with --external_tag.")
    steps, values = zip(*events[tag])
    return make_curve(steps, values, name or tag)


def _column(fields: Sequence[str], want: str) -> str | None:
    """The header in ``fields`` equal to ``want`` ignoring case and surrounding spaces."""
    want = want.strip().lower()
    for f in fields:
        if f is not None and f.strip().lower() == want:
            return f
    return None


def read_csv(path: str, column: str = "loss", step_column: str = "step",
             name: str = "") -> Curve:
    """A Curve from a CSV file with a header row: ``step_column`` and ``column`` (matched
    ignoring case; a file with a ``Value`` column, as TensorBoard's CSV export, is read from it
    when ``column`` is absent). Empty cells are skipped; any other non-number is a LogError."""
    if not os.path.isfile(path):
        raise LogError(f"No CSV file at {path!r}.")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            step_key = _column(fields, step_column)
            value_key = _column(fields, column) or _column(fields, "value")
            if step_key is None or value_key is None:
                missing = [c for c, k in ((step_column, step_key), (column, value_key))
                           if k is None]
                raise LogError(f"The CSV file {path!r} has no column {' or '.join(map(repr, missing))}"
                               f"; its columns are {[c for c in fields if c is not None]}. Pick "
                               "them with --external_tag / --external_step_column.")
            steps, values = [], []
            for row in reader:
                s, v = (row.get(step_key) or "").strip(), (row.get(value_key) or "").strip()
                if not s or not v:
                    continue
                try:
                    steps.append(float(s))
                    values.append(float(v))
                except ValueError as e:
                    raise LogError(f"{path!r} line {reader.line_num}: {s!r}, {v!r} are not "
                                   "numbers.") from e
    except UnicodeDecodeError as e:
        raise LogError(f"{path!r} is not a text CSV file ({e}).") from e
    except csv.Error as e:
        raise LogError(f"{path!r} is not a readable CSV file ({e}).") from e
    if not steps:
        raise LogError(f"The CSV file {path!r} has no rows with both {step_column!r} and "
                       f"{column!r}.")
    return make_curve(steps, values, name or column)


def read_log(path: str, tag: str = "loss", step_column: str = "step", name: str = "") -> Curve:
    """A ``.csv`` file -> ``read_csv``; anything else (event file or run directory) ->
    ``read_tensorboard``."""
    if path.lower().endswith(".csv"):
        return read_csv(path, tag, step_column, name)
    return read_tensorboard(path, tag, name)


def write_csv(path: str, curve: Curve, column: str = "loss") -> None:
    """Write ``step,<column>`` rows (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", column])
            for s, v in zip(curve.steps, curve.values):
                w.writerow([int(s), repr(float(v))])


# -- curve math --------------------------------------------------------------------------------

def smooth(curve: Curve, beta: float) -> np.ndarray:
    """Debiased exponential moving average in step units -> (N,).

    ``num_i = d_i num_{i-1} + (1 - d_i) x_i``, ``den_i = d_i den_{i-1} + (1 - d_i)``,
    ``s_i = num_i / den_i``, from ``num = den = 0``, with ``d_i = beta ** (step_i - step_{i-1})``
    (``d_0 = beta``). Each value weighs ``beta ** (steps ago)`` per logged step, normalised, so
    ``s_0 = x_0`` and for a curve logged every step this is exactly TensorBoard's smoothing
    (zero-initialised EMA divided by ``1 - beta ** (i + 1)``) with weight ``beta``; a point of a
    curve logged every k steps carries the weight of k steps, so curves logged at different
    rates smooth alike. ``beta = 0`` returns the raw values."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"smoothing beta must be in [0, 1); got {beta}.")
    out = np.empty_like(curve.values)
    num = den = 0.0
    prev = None
    for i, (s, v) in enumerate(zip(curve.steps, curve.values)):
        d = beta if prev is None else beta ** float(s - prev)
        num = d * num + (1.0 - d) * v
        den = d * den + (1.0 - d)
        out[i] = num / den
        prev = s
    return out


def steps_to_level(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    """The first step at which ``values`` (N,) is <= ``level`` (None if never)."""
    hit = np.nonzero(np.asarray(values) <= level)[0]
    return int(steps[hit[0]]) if len(hit) else None


def align(steps_a: np.ndarray, a: np.ndarray, steps_b: np.ndarray, b: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put two curves on common steps: ``a``'s steps inside ``b``'s step range, with ``b``
    linearly interpolated there (exact where both logged the same steps).

    Returns (steps (K,), a (K,), b (K,)); K = 0 if the ranges do not overlap."""
    inside = (steps_a >= steps_b[0]) & (steps_a <= steps_b[-1])
    s = steps_a[inside]
    return s, np.asarray(a)[inside], np.interp(s, steps_b, b)


def divergence(steps: np.ndarray, a: np.ndarray, b: np.ndarray, burn_in: int = 0
               ) -> dict[str, Any]:
    """Relative difference ``(a - b) / b`` of aligned curves (K,), ignoring steps before
    ``steps[0] + burn_in``.

    Returns {"max_abs": largest |rel|, "at_step": where, "signed": rel there, "mean_abs",
    "final": rel at the last step, "compared_points": how many steps counted}; NaN values (and
    ``at_step`` None) if no step is left after the burn-in."""
    if len(steps) == 0:
        return {"max_abs": math.nan, "at_step": None, "signed": math.nan, "mean_abs": math.nan,
                "final": math.nan, "compared_points": 0}
    rel = (np.asarray(a) - np.asarray(b)) / np.asarray(b)
    keep = steps >= steps[0] + burn_in
    if not keep.any():
        return {"max_abs": math.nan, "at_step": None, "signed": math.nan, "mean_abs": math.nan,
                "final": float(rel[-1]), "compared_points": 0}
    r, s = rel[keep], steps[keep]
    i = int(np.argmax(np.abs(r)))
    return {"max_abs": float(abs(r[i])), "at_step": int(s[i]), "signed": float(r[i]),
            "mean_abs": float(np.mean(np.abs(r))), "final": float(rel[-1]),
            "compared_points": int(keep.sum())}


def compare(ours: Curve, ref: Curve, *, beta: float = 0.9, burn_in: int = 10,
            levels: Sequence[float] = (0.5, 0.3, 0.2), relative_levels: bool = True,
            tolerance: float = 0.05) -> dict[str, Any]:
    """Summary of ``ours`` (the JAX run) against ``ref`` (the PyTorch run).

    Both curves are smoothed (``smooth`` with ``beta``) on their own steps, then ``ref`` is
    aligned onto ``ours``'s steps (``align``).

    - ``levels``: loss levels; with ``relative_levels`` they are fractions of ``initial_loss``
      (the first raw value of ``ours``). ``steps_to_level``: per level, the first step at which
      each smoothed curve is at or below it (None: not reached).
    - ``final_ratio``: smoothed ours / smoothed ref at the last common step.
    - ``divergence``: ``divergence`` of the smoothed curves after ``burn_in`` steps (relative to
      ref); ``within_tolerance``: its ``max_abs`` <= ``tolerance``.
    """
    s_ours, s_ref = smooth(ours, beta), smooth(ref, beta)
    steps, a, b = align(ours.steps, s_ours, ref.steps, s_ref)
    if len(steps) == 0:
        raise LogError(f"The curves do not overlap: {ours.name or 'ours'} covers steps "
                       f"{ours.steps[0]}..{ours.steps[-1]}, {ref.name or 'ref'} "
                       f"{ref.steps[0]}..{ref.steps[-1]}.")
    initial = float(ours.values[0])
    abs_levels = [float(x) * initial if relative_levels else float(x) for x in levels]
    to_level = []
    for frac, lv in zip(levels, abs_levels):
        to_level.append({"level": lv, "fraction_of_initial": float(frac) if relative_levels
                         else lv / initial,
                         ours.name or "ours": steps_to_level(ours.steps, s_ours, lv),
                         ref.name or "ref": steps_to_level(ref.steps, s_ref, lv)})
    div = divergence(steps, a, b, burn_in)
    return {
        "smoothing": {"kind": "debiased EMA in step units", "beta": beta},
        "burn_in_steps": burn_in,
        "initial_loss": initial,
        "steps_to_level": to_level,
        "final_step": int(steps[-1]),
        "final_smoothed": {ours.name or "ours": float(a[-1]), ref.name or "ref": float(b[-1])},
        "final_ratio": float(a[-1] / b[-1]),
        "divergence": div,
        "tolerance": tolerance,
        "within_tolerance": bool(np.isfinite(div["max_abs"]) and div["max_abs"] <= tolerance),
        "raw_initial_relative_difference": float((ours.values[0] - np.interp(
            ours.steps[0], ref.steps, ref.values)) / np.interp(ours.steps[0], ref.steps,
                                                               ref.values)),
    }


# -- output ------------------------------------------------------------------------------------

def _json_safe(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/inf
    return x


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """``data`` as indented JSON (numpy values converted, NaN/inf as null), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(_json_safe(data), f, indent=1)
            f.write("\n")


def plot_curves(path: str, ours: Curve, ref: Curve, summary: Mapping[str, Any],
                title: str = "") -> None:
    """PNG with two panels, written atomically. Top: both raw curves (faint) and smoothed
    (solid), log y, the loss levels of ``summary`` dotted. Bottom: the absolute relative
    difference of the smoothed curves |ours - ref| / ref on a log axis, the tolerance dashed,
    the burn-in shaded.
    ``summary`` is ``compare``'s output for the same curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    beta = summary["smoothing"]["beta"]
    s_ours, s_ref = smooth(ours, beta), smooth(ref, beta)
    steps, a, b = align(ours.steps, s_ours, ref.steps, s_ref)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    for curve, sm, colour, style, width in ((ours, s_ours, "C0", "-", 2.4),
                                            (ref, s_ref, "C3", "--", 1.4)):
        top.plot(curve.steps, curve.values, color=colour, alpha=0.22, lw=0.8, ls=style)
        top.plot(curve.steps, sm, color=colour, lw=width, ls=style,
                 label=f"{curve.name or 'curve'} (EMA {beta:g})")
    for lv in summary.get("steps_to_level", []):
        top.axhline(lv["level"], color="0.6", ls=":", lw=0.8)
    top.set_yscale("log")
    top.set_ylabel("loss")
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3, which="both")
    top.set_title(title or f"{ours.name} vs {ref.name}", fontsize=10)

    # |relative difference| on a log axis: agreement to 1e-6 and a miss of the tolerance are
    # both readable; exact equality (0) is not drawn.
    rel = np.abs(a - b) / np.abs(b)
    shown = np.where(rel > 0, rel, np.nan)
    tol = summary["tolerance"]
    if len(steps):
        burn_end = steps[0] + summary["burn_in_steps"]
        bottom.axvspan(steps[0], burn_end, color="0.85", alpha=0.6, label="burn-in")
    bottom.axhline(tol, color="C2", ls="--", lw=1.2, label=f"tolerance {100 * tol:g}%")
    bottom.plot(steps, shown, color="k", lw=1.0,
                label=f"|{ours.name} - {ref.name}| / {ref.name}")
    div = summary["divergence"]
    if div.get("at_step") is not None and div["max_abs"] > 0:
        bottom.plot([div["at_step"]], [div["max_abs"]], "o", color="C1", ms=4,
                    label=f"max {100.0 * div['max_abs']:.3g}% (step {div['at_step']})")
    finite = shown[np.isfinite(shown)]
    low = max(float(finite.min()) / 3 if len(finite) else tol / 1e3, 1e-12)
    bottom.set_yscale("log")
    bottom.set_ylim(min(low, tol / 10), max(3 * tol, 3 * float(finite.max()) if len(finite)
                                             else 0.0))
    bottom.set_ylabel("smoothed |rel. diff|")
    bottom.set_xlabel("step")
    bottom.legend(loc="best", fontsize=7, ncol=2)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
