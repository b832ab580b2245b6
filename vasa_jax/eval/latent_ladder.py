"""The stage-1 diagnostic ladder: one table over the ``latent_eval.json`` reports of runs that
differ in one config switch each, so every failure has an address.

Rungs (``configs/latent.py``): ``oracle`` (the decoder driven by ground-truth motion: can the
warp + G3D + G2D render a driver's mouth and head turn at all?), ``guided`` (the motion encoder
with pose and expression guidance), ``unguided`` (the papers' recipe: no labels). A rung that
fails while the one above it passes locates the fault between them.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from vasa_jax.eval.latent_eval import PROBED_FIELDS
from vasa_jax.atomic import atomic_path

COLUMNS = (("self PSNR", "self", "psnr"), ("self LPIPS", "self", "lpips_alex"),
           ("cross PSNR", "cross", "psnr_vs_render"),
           ("cross LPIPS", "cross", "lpips_alex_vs_render")) + tuple(
    (f"cross r {f}", "cross", f"probe_r_{f}") for f in PROBED_FIELDS) + tuple(
    (f"latent r {f}", "motion_latents", f"latent_r_{f}") for f in PROBED_FIELDS)


def read_report(path: str) -> dict[str, Any]:
    """A ``latent_eval.json`` (or the directory holding it)."""
    if os.path.isdir(path):
        path = os.path.join(path, "latent_eval.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No stage-1 report at {path}: run `vasa-jax eval latent "
                                f"--workdir RUN --probe-workdir PROBE` on that run first.")
    with open(path) as f:
        return json.load(f)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"


def ladder_rows(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per rung: {"rung", "workdir", "checkpoint_step", "train_seconds", <column>:
    value}."""
    rows = []
    for name, rep in reports.items():
        row = {"rung": name, "workdir": rep.get("workdir"),
               "checkpoint_step": rep.get("checkpoint_step"),
               "train_seconds": rep.get("train_seconds")}
        for label, part, key in COLUMNS:
            row[label] = (rep.get(part) or {}).get(key)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["rung", "steps"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["rung"], str(r["checkpoint_step"] or "-")] + [_fmt(r[c[0]]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_ladder(reports: Mapping[str, Mapping[str, Any]], out_dir: str) -> tuple[str, str]:
    """``ladder.json`` and ``ladder.md`` in ``out_dir`` (atomically)."""
    os.makedirs(out_dir, exist_ok=True)
    rows = ladder_rows(reports)
    js, md = os.path.join(out_dir, "ladder.json"), os.path.join(out_dir, "ladder.md")
    with atomic_path(js) as tmp, open(tmp, "w") as f:
        json.dump({"rows": rows}, f, indent=2)
    with atomic_path(md) as tmp, open(tmp, "w") as f:
        f.write(markdown(rows))
    return js, md
