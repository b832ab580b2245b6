"""``vasa-jax ship``: a trained probe, SyncNet or CAPP run -> ``vasa_jax/assets/NAME.{npz,json}``
(``vasa_jax.shipped``), loadable as ``package:NAME``."""

from __future__ import annotations

import os

from vasa_jax.cli.common import user_errors


def ship_weights(args) -> tuple[str, str]:
    """The kind is read from the held-out file the run holds (a probe if none)."""
    from flax import nnx

    from vasa_jax import shipped
    from vasa_jax.instruments.load import heldout_path, load_instrument

    kind = next((k for k in ("syncnet", "capp", "probe")
                 if os.path.exists(heldout_path(args.workdir, k))), "probe")
    with user_errors(FileNotFoundError, ValueError):
        net = load_instrument(kind, args.workdir)
    command = args.command or (f"vasa-jax train {kind} --workdir {args.workdir} --variant "
                               f"{net.config.variant} --set seed={net.config.seed}")
    paths = shipped.ship(args.name, nnx.merge(net.graphdef, net.state), kind=kind,
                         config=net.config, step=net.step, heldout=net.heldout,
                         command=command, assets=args.assets or shipped.ASSETS)
    print("\n".join(f"Wrote {p}" for p in paths))
    return paths


def add_parser(sub) -> None:
    sh = sub.add_parser("ship", help="a trained probe, SyncNet or CAPP run (a measuring "
                        "instrument, or the motion estimator) -> vasa_jax/assets/NAME.{npz,json}")
    sh.add_argument("--workdir", required=True,
                    help="the run, with its held-out file ({probe,syncnet,capp}_heldout.json)")
    sh.add_argument("--name", required=True, help="shipped as package:NAME")
    sh.add_argument("--command", default="", help="how it was trained (recorded)")
    sh.add_argument("--assets", default=None, help="default: the package's vasa_jax/assets")
    sh.set_defaults(func=ship_weights)
