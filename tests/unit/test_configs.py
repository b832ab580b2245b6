"""The config files: every variant builds, the blocks of ``configs/common.py`` are what every
stage uses, a few stated values hold, and the learning-rate decay follows ``train.steps``
however it is overridden."""

from __future__ import annotations

import importlib

import pytest

from configs import common

STAGES = ("latent", "motion", "probe", "capp", "syncnet")


def _module(stage: str):
    return importlib.import_module(f"configs.{stage}")


def _all_configs():
    """(stage, variant, config) of every variant of every config file."""
    for stage in STAGES:
        module = _module(stage)
        for variant in module.VARIANTS:
            yield stage, variant, module.get_config(variant)


def test_every_variant_builds_and_records_itself():
    built = list(_all_configs())
    assert {s for s, _, _ in built} == set(STAGES)
    for stage, variant, c in built:
        assert (c.task, c.variant) == (stage, variant)
        assert len(c.mesh_shape) == 3, (stage, variant)


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="Unknown motion config variant"):
        _module("motion").get_config("no_such_variant")


def test_common_blocks_are_shared():
    """Every stage's optimiser block is exactly ``common.optim``'s fields, and its runtime, data,
    loop and evaluation blocks hold at least the common fields (stages add their own)."""
    blocks = {"optim": common.optim(), "train": common.train_loop(), "data": common.data(),
              "eval": common.evaluation()}
    runtime = set(common.runtime("any"))
    for stage, variant, c in _all_configs():
        assert set(c.optim) == set(blocks["optim"]), (stage, variant)
        for name, block in blocks.items():
            assert set(block) <= set(c[name]), (stage, variant, name)
        assert runtime <= set(c), (stage, variant)


def test_block_overrides_must_name_a_field():
    assert common.optim(lr=0.5).lr == 0.5
    with pytest.raises(TypeError, match="no field lr_typo"):
        common.optim(lr_typo=0.5)


def test_decay_is_derived_from_train_steps():
    """No config fixes the decay's length (``optim.decay_steps`` 0): it is the run's
    ``train.steps``, read where the schedule is built."""
    for stage, variant, c in _all_configs():
        assert c.optim.decay_steps == 0, (stage, variant)
        assert c.optim.warmup_steps < c.train.steps, (stage, variant)


def test_dead_fields_are_gone():
    for stage, variant, c in _all_configs():
        assert "identity_embedder" not in c.get("loss", {}), (stage, variant)


def test_paper_values():
    """What DESIGN.md pins from the papers."""
    m = _module("motion").get_config("paper")
    assert (m.model.depth, m.model.width, m.model.heads) == (8, 512, 8)
    assert (m.model.window, m.model.context) == (50, 10)
    assert dict(m.sample.cfg) == {"audio": 0.5, "gaze": 1.0} and m.sample.steps == 50
    lat = _module("latent").get_config("paper")
    assert (lat.model.volume_channels, lat.model.volume_depth, lat.data.resolution) == (96, 16, 512)
    o = lat.optim
    assert (o.lr, o.b1, o.b2, o.weight_decay) == (2e-4, 0.5, 0.999, 1e-2)
    assert o.lr * o.end_lr_factor == pytest.approx(1e-6)
    assert (lat.loss.adversarial, lat.loss.feature_matching) == (1.0, 40.0)


def test_overriding_train_steps_moves_the_decay():
    """The CLI and launch/train.py override ``train.steps`` after ``get_config``; the schedule
    the trainer builds must then end its decay at the new length, not the variant's."""
    from vasa_jax.train.state import lr_schedule

    c = _module("motion").get_config("test")
    end = c.optim.lr * c.optim.end_lr_factor
    short = lr_schedule(c.optim, c.train.steps)
    assert float(short(c.train.steps)) == pytest.approx(end)

    c.train.steps = 1000  # as --config.train.steps=1000 / `train.steps=1000`
    long = lr_schedule(c.optim, c.train.steps)
    assert float(long(30)) > 0.9 * c.optim.lr  # the old end: still near the peak
    assert float(long(500)) > 2 * end
    assert float(long(1000)) == pytest.approx(end)

    c.optim.decay_steps = 200  # an explicit decay length still wins
    assert float(lr_schedule(c.optim, c.train.steps)(200)) == pytest.approx(end)
