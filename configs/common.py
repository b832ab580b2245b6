"""What every ``configs/<stage>.py`` shares: picking a variant of a base config."""

from __future__ import annotations

from typing import Callable, Mapping

import ml_collections


def from_variant(kind: str, arg: str, base: Callable[[], ml_collections.ConfigDict],
                 variants: Mapping[str, Callable]) -> ml_collections.ConfigDict:
    """``base()`` changed by ``variants[arg]``; the LR decays over the whole run
    (``optim.decay_steps = train.steps``) and ``variant`` records ``arg``."""
    if arg not in variants:
        raise ValueError(f"Unknown {kind} config variant {arg!r}; use one of {sorted(variants)}.")
    c = base()
    variants[arg](c)
    c.optim.decay_steps = c.train.steps
    c.variant = arg
    return c
