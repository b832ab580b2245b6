"""``vasa-jax train STAGE``: train a stage or an instrument on this host (``launch/train.py``
is the multi-host entry; both call ``vasa_jax.train.run.run``)."""

from __future__ import annotations

from vasa_jax.cli.common import user_errors
from vasa_jax.train.run import DEFAULT_VARIANTS, STAGES


def train_stage(args) -> dict:
    """``train STAGE --workdir DIR [--variant V] [--data-dir D] [--set FIELD=VALUE ...]
    [--allow-config-change]``."""
    from data_pipeline.loader import DatasetNotFoundError, TooManyBadRecords
    from vasa_jax.checkpoint import CheckpointMismatch
    from vasa_jax.train.run import ConfigError, fit_stage
    from vasa_jax.train.trainer import NonFiniteSteps

    with user_errors(ConfigError, DatasetNotFoundError, CheckpointMismatch, TooManyBadRecords,
                     NonFiniteSteps):
        return fit_stage(args.stage, args.workdir, variant=args.variant,
                         data_dir=args.data_dir, overrides=args.set,
                         allow_config_change=args.allow_config_change)


def add_parser(sub) -> None:
    """``train {motion,latent,probe,syncnet,capp}``."""
    tr = sub.add_parser("train", help="train a stage on this host")
    trsub = tr.add_subparsers(dest="stage", required=True)
    for stage, help_ in STAGES.items():
        tm = trsub.add_parser(stage, help=help_)
        tm.add_argument("--workdir", required=True)
        tm.add_argument("--variant", default=None,
                        help=f"a configs/{stage}.py variant (default {DEFAULT_VARIANTS[stage]})")
        tm.add_argument("--data-dir", default=None)
        tm.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. --set train.steps=500 (repeatable)")
        tm.add_argument("--allow-config-change", action="store_true",
                        help="resume a workdir even though the config changes what is trained "
                             "(batch size, data, learning rate, ...; the diff is printed)")
        tm.set_defaults(func=train_stage)
