"""Loading a measuring instrument with its held-out accuracy: one path for the SynthTalk probe,
SyncNet and CAPP.

An instrument is referenced by a run directory (trained with ``configs/<kind>.py``; its
held-out figures are written beside the checkpoint when training ends) or by ``package:NAME``,
a network shipped in ``vasa_jax/assets`` (``vasa_jax.shipped``) that carries its figures in its
record. ``load_instrument`` refuses an instrument without its held-out figures: they must be
reported wherever its numbers are used. ``restore_instrument`` skips them (e.g. for the frozen
motion estimator inside stage 1).

Use::

  probe = load_probe("runs/probe")              # or load_probe(SHIPPED_PROBE)
  net = load_syncnet("package:syncnet_synthtalk64")
  capp = load_instrument("capp", "runs/capp")
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vasa_jax import shipped
from vasa_jax.atomic import read_json_nan, write_json_nan
from vasa_jax.instruments import capp as capp_lib
from vasa_jax.instruments import probe as probe_lib
from vasa_jax.instruments import syncnet as syncnet_lib
from vasa_jax.models import restore_model

# kind -> (name in messages, host wrapper, held-out file, training config)
KINDS: dict[str, tuple[str, Any, str, str]] = {
    "probe": ("SynthTalk probe", probe_lib.Probe, probe_lib.HELDOUT_FILE,
              "configs/probe.py:synthtalk64"),
    "syncnet": ("SyncNet", syncnet_lib.SyncNet, syncnet_lib.HELDOUT_FILE,
                "configs/syncnet.py:synthtalk64"),
    "capp": ("CAPP", capp_lib.Capp, capp_lib.HELDOUT_FILE, "configs/capp.py:synthtalk64"),
}
# Files besides the held-out metrics that a trained run must have to be used for measuring.
_EXTRA_FILES = {"syncnet": (syncnet_lib.BATCH_STATS_FILE,)}


def _kind(kind: str) -> tuple[str, Any, str, str]:
    if kind not in KINDS:
        raise ValueError(f"Unknown instrument {kind!r}; use one of {sorted(KINDS)}.")
    return KINDS[kind]


def heldout_command(workdir: str) -> str:
    """The command that (re)writes a trained instrument's held-out files."""
    return (f"`python -c \"from vasa_jax.train.heldout import write_heldout; "
            f"write_heldout('{workdir}')\"`")


def train_fix(kind: str, workdir: str) -> str:
    """How to train the instrument ``kind`` into ``workdir`` (for error messages)."""
    _, _, heldout, config = _kind(kind)
    return (f"Train it with `vasa-jax train {kind} --workdir {workdir}` or `python "
            f"launch/train.py --config={config} --workdir={workdir}` (this also writes "
            f"{heldout}).")


def heldout_path(workdir: str, kind: str) -> str:
    return os.path.join(workdir, _kind(kind)[2])


def read_heldout(workdir: str, kind: str) -> dict[str, Any]:
    """The instrument's held-out metrics in ``workdir``, JSON nulls (undefined correlations)
    read as NaN."""
    return read_json_nan(heldout_path(workdir, kind))


def write_heldout_file(workdir: str, kind: str, metrics: dict[str, Any]) -> str:
    """Write the held-out metrics atomically, NaN as JSON null (``read_heldout``'s inverse).
    Returns the path."""
    return write_json_nan(heldout_path(workdir, kind), metrics)


def restore_instrument(kind: str, ref: str, *, step: int | None = None):
    """The instrument ``kind`` in ``ref`` (a run dir: EMA weights of checkpoint ``step``, the
    latest by default, without held-out metrics; ``package:NAME``: the shipped one, with them)
    as its host wrapper (``Probe``, ``SyncNet`` or ``Capp``)."""
    what, wrap, _, _ = _kind(kind)
    if shipped.is_shipped(ref):
        model, rec = shipped.load(ref)
        if rec["kind"] != kind:
            raise ValueError(f"{ref} is a shipped {rec['kind']!r} network, not a {what}.")
        return wrap(model, step=rec["step"], config=rec["config"], heldout=rec["heldout"])
    run = restore_model(ref, step=step, task=kind, what=what, fix=train_fix(kind, ref))
    stats = os.path.join(ref, syncnet_lib.BATCH_STATS_FILE)
    if kind == "syncnet" and os.path.exists(stats):
        with np.load(stats) as f:
            syncnet_lib.load_batch_stats(run.model, dict(f))
    return wrap(run.model, step=run.step, config=run.config)


def load_instrument(kind: str, ref: str, *, step: int | None = None):
    """``restore_instrument`` with the held-out metrics in ``.heldout``. FileNotFoundError
    naming the fix when the run has no checkpoint or lacks its held-out files."""
    inst = restore_instrument(kind, ref, step=step)
    if shipped.is_shipped(ref):
        return inst
    what = _kind(kind)[0]
    missing = [os.path.join(ref, f) for f in (_kind(kind)[2],) + _EXTRA_FILES.get(kind, ())
               if not os.path.exists(os.path.join(ref, f))]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} missing: the {what}'s held-out accuracy must be reported with "
            f"its numbers. Write it with {heldout_command(ref)}, or retrain: "
            f"{train_fix(kind, ref)}")
    inst.heldout = read_heldout(ref, kind)
    return inst


def load_probe(ref: str, *, step: int | None = None) -> probe_lib.Probe:
    return load_instrument("probe", ref, step=step)


def restore_probe(ref: str, *, step: int | None = None) -> probe_lib.Probe:
    return restore_instrument("probe", ref, step=step)


def load_syncnet(ref: str, *, step: int | None = None) -> syncnet_lib.SyncNet:
    return load_instrument("syncnet", ref, step=step)


def load_capp(ref: str, *, step: int | None = None) -> capp_lib.Capp:
    return load_instrument("capp", ref, step=step)
