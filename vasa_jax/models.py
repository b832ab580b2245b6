"""One way to build a network from its config and to load a trained one from its run directory.

``config.task`` names the network: ``motion`` (stage 2's MotionDiT), ``latent`` (stage 1's face
latent model with its discriminator), and the measuring instruments ``probe``, ``capp`` and
``syncnet``. This module sits below both training and evaluation: the trainer builds networks
with ``build_model``; the pipeline, the latents builder, the evaluation and the instruments load
trained ones with ``restore_model``, which reads only what inference needs from the checkpoint
(the EMA weights, the parameters of groups without an EMA, and the non-trained variables such as
dataset statistics), never the optimiser state, and builds no trainer.

Parameters are split into named groups (``param_groups``), each with its own optimiser; stage
1's discriminator and generator are two groups, and only the generator has an EMA.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
from flax import nnx

from vasa_jax.checkpoint import read_config, read_state_subtree

TASKS = ("motion", "latent", "probe", "capp", "syncnet")

# Stage 1: the discriminator's filter comes first (a variable goes to the first group it
# matches). A frozen pretrained motion estimator (model.motion_source = "estimator") is in no
# group: its weights ride in the non-trained ``rest``, untouched by the optimiser.
DISCRIMINATOR = nnx.All(nnx.Param, nnx.PathContains("discriminator"))
GENERATOR = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("estimator")))
_GROUPS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "latent": ({"discriminator": DISCRIMINATOR, "generator": GENERATOR}, ("generator",)),
}
_DEFAULT_GROUPS = ({"model": nnx.Param}, ("model",))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; known: {', '.join(TASKS)}.")


def param_groups(task: str) -> Mapping[str, Any]:
    """Ordered {group name: nnx filter} of ``task``'s trained parameters."""
    _check_task(task)
    return _GROUPS.get(task, _DEFAULT_GROUPS)[0]


def ema_groups(task: str) -> tuple[str, ...]:
    """The groups of ``task`` whose parameters have an exponential moving average."""
    _check_task(task)
    return _GROUPS.get(task, _DEFAULT_GROUPS)[1]


def build_model(config, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The freshly initialised network of ``config.task`` (random weights from ``rngs``,
    default ``nnx.Rngs(config.seed)``), its blocks rematerialised when ``model.remat``
    (``vasa_jax.nn.remat``). Wrap in ``nnx.eval_shape`` to allocate nothing."""
    model = _build(config, rngs)
    if config.model.get("remat", False):
        from vasa_jax.nn.remat import enable_remat

        enable_remat(model)
    return model


def _build(config, rngs: nnx.Rngs | None) -> nnx.Module:
    task = config.task
    _check_task(task)
    rngs = nnx.Rngs(config.get("seed", 0)) if rngs is None else rngs
    if task == "motion":
        from vasa_jax.motion.dit import make_motion_dit

        return make_motion_dit(config.model, rngs=rngs)
    if task == "latent":
        from vasa_jax.latent.model import make_face_latent_model

        return make_face_latent_model(config.model, rngs=rngs)
    if task == "probe":
        from vasa_jax.instruments.probe import make_probe

        return make_probe(config.model, rngs=rngs)
    if task == "capp":
        from vasa_jax.instruments.capp import make_capp

        return make_capp(config, rngs=rngs)
    from vasa_jax.instruments.syncnet import make_syncnet

    return make_syncnet(config.model, rngs=rngs)


def split_groups(model: nnx.Module, groups: Mapping[str, Any]):
    """(graphdef, {group: nnx.State}, rest) of ``model`` by the ordered {group: nnx filter}
    ``groups`` (e.g. ``param_groups(task)``); what no filter matches is ``rest``."""
    graphdef, *states, rest = nnx.split(model, *groups.values(), ...)
    return graphdef, dict(zip(groups, states)), rest


@dataclasses.dataclass
class Restored:
    """A trained network on this host: ``model`` (EMA weights), the checkpoint ``step`` and the
    run's ``config``."""

    model: nnx.Module
    step: int
    config: ml_collections.ConfigDict


def train_command(workdir: str, task: str | None = None) -> str:
    """How to train a run into ``workdir`` (for error messages)."""
    return f"Train first, e.g. `vasa-jax train {task or 'motion'} --workdir {workdir}`."


def restore_model(workdir: str, *, step: int | None = None, task: str | None = None,
                  what: str | None = None, fix: str | None = None) -> Restored:
    """The network trained in ``workdir`` (a local path or any path orbax opens, e.g.
    gs://bucket/run) with its EMA weights, from checkpoint ``step`` (default: the latest), on
    this host's default device.

    ``task``: refuse (ValueError) a run of another task. ``what`` names the network and ``fix``
    says how to train one, in the FileNotFoundError raised when there is no checkpoint.
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    what = what or f"{task or 'trained'} run"
    missing = (f"No checkpoint under {ckpt_dir} (a {what} is needed there). "
               f"{fix or train_command(workdir, task)}")
    if not epath.Path(ckpt_dir).is_dir():
        raise FileNotFoundError(missing)
    try:
        step, config = read_config(ckpt_dir, step)
    except FileNotFoundError as e:
        raise FileNotFoundError(missing) from e
    config = ml_collections.ConfigDict(config)
    if task is not None and config.task != task:
        raise ValueError(f"{workdir} holds a {config.task!r} run; a {what} is needed.")
    graphdef, groups, rest = split_groups(nnx.eval_shape(lambda: build_model(config)),
                                          param_groups(config.task))
    ema = ema_groups(config.task)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(state: nnx.State):  # the train state stores each variable as {"value": array}
        return jax.tree.map(lambda x: {"value": jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                     sharding=device)},
                            state.to_pure_dict())

    def values(stored):
        return jax.tree.map(lambda v: v["value"], stored,
                            is_leaf=lambda v: isinstance(v, dict) and set(v) == {"value"})

    where = {g: "ema" if g in ema else "params" for g in groups}
    wanted: dict[str, dict] = {}
    for g, state in list(groups.items()) + [("rest", rest)]:
        if jax.tree.leaves(state):  # orbax cannot match an empty subtree
            section = wanted if g == "rest" else wanted.setdefault(where[g], {})
            section[g] = target(state)
    stored = read_state_subtree(ckpt_dir, wanted, step)
    for g in groups:
        if g in stored.get(where[g], {}):
            nnx.replace_by_pure_dict(groups[g], values(stored[where[g]][g]))
    if "rest" in stored:
        nnx.replace_by_pure_dict(rest, values(stored["rest"]))
    states = [jax.tree.map(jnp.asarray, groups[g]) for g in groups] + [
        jax.tree.map(jnp.asarray, rest)]
    return Restored(nnx.merge(graphdef, *states), step, config)
