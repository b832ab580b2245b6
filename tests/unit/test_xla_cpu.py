"""The CPU-only XLA default (vasa_jax.xla_cpu): when it adds the -O2 flag and when it must not."""

import os

from vasa_jax import xla_cpu


def test_adds_the_flag_on_cpu_only_jobs(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert xla_cpu.prefer_fast_cpu_compiles()
    assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                                       "--xla_backend_optimization_level=2")
    assert not xla_cpu.prefer_fast_cpu_compiles()  # idempotent


def test_leaves_a_chosen_level_and_accelerators_alone(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
    assert not xla_cpu.prefer_fast_cpu_compiles()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=3"

    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not xla_cpu.prefer_fast_cpu_compiles()
    monkeypatch.setenv("JAX_PLATFORMS", "")
    monkeypatch.setattr(xla_cpu, "_accelerator_plugin_installed", lambda: True)
    assert not xla_cpu.prefer_fast_cpu_compiles()
    monkeypatch.setattr(xla_cpu, "_accelerator_plugin_installed", lambda: False)
    assert xla_cpu.prefer_fast_cpu_compiles()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=2"
