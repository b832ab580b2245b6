"""``vasa-jax quickstart``: the README's main job (``vasa_jax.demo.quickstart``)."""

from __future__ import annotations

from vasa_jax.cli.common import unwritable_data_dir, user_errors


def quickstart(args) -> dict:
    """SynthTalk -> stage 1 -> latents -> stage 2 -> a held-out person speaking held-out
    audio, all under --workdir."""
    from data_pipeline.loader import DatasetNotFoundError
    from data_pipeline.synthtalk.prepare import SynthtalkConfigError
    from vasa_jax.demo import quickstart
    from vasa_jax.train.run import ConfigError

    with user_errors(SynthtalkConfigError, ConfigError, DatasetNotFoundError), \
            unwritable_data_dir():
        return quickstart(args.workdir, data_dir=args.data_dir,
                          synthtalk_config=args.synthtalk_config, workers=args.workers,
                          latent_variant=args.latent_variant, motion_variant=args.motion_variant,
                          set_latent=args.set_latent, set_motion=args.set_motion)


def add_parser(sub) -> None:
    q = sub.add_parser("quickstart", help="the README's main job: SynthTalk -> stage 1 -> "
                       "latents -> stage 2 -> a held-out person speaking held-out audio")
    q.add_argument("--workdir", default="runs/quickstart")
    q.add_argument("--data-dir", default=None, help="default: WORKDIR/tensorflow_datasets")
    q.add_argument("--synthtalk-config", default="res64_small")
    q.add_argument("--workers", type=int, default=0)
    q.add_argument("--latent-variant", default="quickstart", help="configs/latent.py variant")
    q.add_argument("--motion-variant", default="quickstart_latents",
                   help="configs/motion.py variant (one that trains on latents)")
    q.add_argument("--set-latent", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a stage-1 config field (repeatable)")
    q.add_argument("--set-motion", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a stage-2 config field (repeatable)")
    q.set_defaults(func=quickstart)
