"""What every ``configs/<stage>.py`` shares: the blocks most stages fill alike (runtime, data,
optimiser, training loop, evaluation) and picking a variant of a base config.

Each block function returns the shared defaults changed by its keyword arguments; an argument
that names no field of the block is an error (a misspelt override would otherwise add a field
nobody reads). A stage adds the fields only it has by assignment after building the block, so
its ``base()`` holds only what is particular to it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import ml_collections

from vasa_jax.parallel import DEFAULT_RULES


def _block(name: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]
           ) -> ml_collections.ConfigDict:
    """``defaults`` updated by ``overrides`` (only fields of ``defaults``) as a ConfigDict."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"{name}() has no field {', '.join(unknown)}; add a stage's own fields "
                        f"by assignment after building the block.")
    return ml_collections.ConfigDict({**defaults, **overrides})


def runtime(task: str, **overrides) -> ml_collections.ConfigDict:
    """The top level of a stage's config: which task it trains, the variant (set by
    ``from_variant``), the seed and the device mesh.

    ``mesh_shape`` is over ('data', 'fsdp', 'tensor'); -1 fills with the remaining devices.
    ``num_devices``: 0 = every device; N = the first N (tests compare mesh sizes).
    ``axis_rules``: logical axis -> mesh axis (``vasa_jax.parallel``); axis names without a rule
    are replicated."""
    return _block("runtime", dict(task=task, variant="", seed=0, mesh_shape=(-1, 1, 1),
                                  num_devices=0, axis_rules=tuple(DEFAULT_RULES)), overrides)


def data(**overrides) -> ml_collections.ConfigDict:
    """The dataset and its loader: the TFDS ``dataset`` / ``config`` read from ``data_dir``
    ("" = $VASA_JAX_DATA_DIR or ~/tensorflow_datasets), the global ``batch_size``, the mirror
    augmentation (``flip``) and the grain worker processes.

    Damaged records are skipped and counted (``data_pipeline.loader``); training stops when more
    than ``max_skipped_fraction`` of the records read were skipped, judged once
    ``skip_check_after`` records were read (so one bad record early does not stop a run)."""
    return _block("data", dict(dataset="synthtalk", config="res64_small", data_dir="",
                               split="train", batch_size=32, flip=True, num_workers=0,
                               worker_buffer_size=2, max_skipped_fraction=0.01,
                               skip_check_after=1000), overrides)


def optim(**overrides) -> ml_collections.ConfigDict:
    """AdamW with global-norm clipping, linear warmup then cosine decay, and the EMA of the
    weights (``vasa_jax.train.state``). ``decay_steps`` = 0 decays over the whole run
    (``train.steps``, read where the schedule is built, so overriding ``train.steps`` moves
    the end of the decay with it); > 0 fixes the decay's length."""
    return _block("optim", dict(lr=1e-3, warmup_steps=100, decay_steps=0, end_lr_factor=0.01,
                                b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=1.0,
                                ema_decay=0.999), overrides)


def train_loop(**overrides) -> ml_collections.ConfigDict:
    """The trainer's loop: ``steps`` updates, logging / evaluation / checkpoints every so many
    steps (0: never evaluate), the checkpoints kept, and a profile of ``profile_steps`` steps
    (0: none) from ``profile_first_step``. A step with a non-finite loss or gradients is
    skipped; ``max_nonfinite_steps`` such steps in a row stop the run (0: never stop)."""
    return _block("train_loop", dict(steps=200_000, log_every=100, eval_every=5000,
                                     checkpoint_every=5000, keep_checkpoints=3,
                                     async_checkpoints=True, profile_steps=0,
                                     profile_first_step=10, max_nonfinite_steps=20), overrides)


def evaluation(**overrides) -> ml_collections.ConfigDict:
    """The final evaluation reads ``split`` (the held-out identities; ``max_clips`` 0 = all);
    the evaluation during training reads ``train_eval_split``. Instruments add
    ``heldout_after_training`` by assignment: measure on ``split`` when training ends."""
    return _block("evaluation", dict(split="test", max_clips=0,
                                     train_eval_split="validation"), overrides)


def from_variant(kind: str, arg: str, base: Callable[[], ml_collections.ConfigDict],
                 variants: Mapping[str, Callable]) -> ml_collections.ConfigDict:
    """``base()`` changed by ``variants[arg]``; ``variant`` records ``arg``."""
    if arg not in variants:
        raise ValueError(f"Unknown {kind} config variant {arg!r}; use one of {sorted(variants)}.")
    c = base()
    variants[arg](c)
    c.variant = arg
    return c
