"""The one training entry point: a stage's config (a ``configs/<stage>.py`` variant plus
``FIELD=VALUE`` overrides) -> a trained workdir.

``run(config, workdir)`` is what ``launch/train.py`` (absl, multi-host) and ``vasa-jax train``
(one host, with a progress bar) both call; ``fit_stage`` is the one-host job around it: load the
variant, apply overrides, train, report. Overrides are parsed by ml_collections' own
``config_flags``, exactly as ``launch/train.py --config.FIELD=VALUE`` parses them.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from typing import Iterable

from absl import logging

STAGES = {"motion": "stage 2 (MotionDiT)", "latent": "stage 1 (FaceLatentModel)",
          "probe": "the SynthTalk probe", "syncnet": "the SyncNet lip-sync instrument",
          "capp": "the CAPP audio-pose instrument"}
DEFAULT_VARIANTS = {"motion": "synthtalk", "latent": "synthtalk64_estimator",
                    "probe": "synthtalk64", "syncnet": "synthtalk64", "capp": "synthtalk64"}
INSTRUMENTS = ("probe", "syncnet", "capp")  # measuring networks: a held-out file after training


class ConfigError(ValueError):
    """An unknown variant, an unknown field or a value that does not parse."""


def _check_field(config, key: str) -> None:
    """Raise ``ConfigError`` naming the fix when ``key`` (dotted) is not a field of ``config``:
    the close names at the level that fails, else that level's fields."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if not hasattr(node, "items"):
            raise ConfigError(f"Unknown config field {key!r}; {parent!r} is a value, not a "
                              f"group of fields.")
        if part not in node:
            rest = "".join(f".{p}" for p in parts[i + 1:])
            names = [k for k in node if not rest or hasattr(node[k], "items")]
            close = [f"{parent}.{c}".lstrip(".") + rest
                     for c in difflib.get_close_matches(part, names, n=3, cutoff=0.6)]
            hint = (f"did you mean {' or '.join(map(repr, close))}?" if close else
                    f"the fields of {parent or 'the config'} are: {', '.join(sorted(node))}.")
            raise ConfigError(f"Unknown config field {key!r}; {hint}")
        node = node[part]


def apply_overrides(config, overrides: Iterable[str], *, new_fields: bool = False):
    """Apply ``FIELD=VALUE`` strings to ``config`` in place and return it.

    Values are parsed by the field's type exactly as ``launch/train.py --config.FIELD=VALUE``
    parses them (ml_collections ``config_flags``: ints, floats, bools, tuples as ``(a,b)``,
    strings). ``new_fields`` accepts fields the config does not have (their values read as
    Python literals where they parse, else strings). Raises ``ConfigError``."""
    from absl import flags
    from ml_collections import config_flags

    argv = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Expected FIELD=VALUE, e.g. train.steps=500; got {item!r}.")
        if not new_fields:
            _check_field(config, key)
        argv.append(f"--config.{item}")
    if not argv:
        return config
    argv = ["vasa-jax", *argv]
    values = flags.FlagValues()
    try:  # the overrides are read (from sys_argv) when the flag is defined
        config_flags.DEFINE_config_dict("config", config, flag_values=values, lock_config=False,
                                        accept_new_attributes=new_fields, sys_argv=argv)
        values(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        raise ConfigError(f"Bad config override: {e}") from None
    return config


def load_config(stage: str, variant: str | None = None, *, data_dir: str | None = None,
                overrides: Iterable[str] = ()):
    """``configs/<stage>.py:variant`` (default ``DEFAULT_VARIANTS[stage]``) with
    ``data.data_dir`` and the ``FIELD=VALUE`` overrides applied. Raises ``ConfigError``."""
    get_config = importlib.import_module(f"configs.{stage}").get_config
    try:
        config = get_config(variant or DEFAULT_VARIANTS[stage])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if data_dir:
        config.data.data_dir = data_dir
    return apply_overrides(config, overrides)


def run(config, workdir: str, *, progress: bool = False, allow_config_change: bool = False
        ) -> dict:
    """Train ``config`` into ``workdir`` (resuming from its latest checkpoint); returns the
    last logged metrics and ``train_seconds``. ``progress``: also print the model size and show
    a progress bar (a terminal on one host). ``allow_config_change``: resume even though fields
    that change training differ from the checkpoint's config (the diff is logged; without it
    such a resume stops with the diff, ``Trainer._check_resume``)."""
    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer

    trainer = Trainer(make_task(config), config, workdir)
    logging.info("%s: %d parameters on mesh %s", config.task, trainer.num_params(),
                 dict(trainer.mesh.shape))
    if progress:
        print(f"{trainer.num_params():,} parameters on mesh {dict(trainer.mesh.shape)}")
    result = trainer.fit(progress=progress, allow_config_change=allow_config_change)
    logging.info("done: %s", result)
    return result


def fit_stage(stage: str, workdir: str, *, variant: str | None = None,
              data_dir: str | None = None, overrides: Iterable[str] = (),
              allow_config_change: bool = False) -> dict:
    """Train ``stage`` (a key of ``STAGES``) on this host with progress on the terminal; an
    instrument's held-out accuracy (written by its task at the end of training) is printed.
    ``allow_config_change`` as in ``run``."""
    config = load_config(stage, variant, data_dir=data_dir, overrides=overrides)
    print(f"Training {STAGES[stage]} ({config.variant}) for {config.train.steps} steps into "
          f"{workdir}")
    result = run(config, workdir, progress=True, allow_config_change=allow_config_change)
    print(f"Done in {result['train_seconds'] / 60:.1f} min; "
          f"final loss {result.get('loss', 0):.4f}.")
    heldout = os.path.join(workdir, f"{stage}_heldout.json")
    if stage in INSTRUMENTS and os.path.exists(heldout):
        with open(heldout) as f:
            print(f"Held-out {stage} accuracy: {json.load(f)}")
    return result
