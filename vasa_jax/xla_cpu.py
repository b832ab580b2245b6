"""XLA's CPU backend compiles with LLVM at -O2 unless told otherwise.

Left unset, XLA's CPU compile spends most of its time in LLVM optimising the thousands of small
fused kernels a training step becomes. Setting the level to 2 explicitly, stage 1's ``test``
trainer initialises in 11 s instead of 73 s and its train step compiles in 64 s instead of 76 s,
for a step 10 % slower (1.02 s vs 0.93 s); level 1 was no faster to compile and slower to run
(``benchmarks/bench_compile.py``, ``benchmarks/results/compile.json``, 2026-12-04, one core).

``prefer_fast_cpu_compiles()`` must run before JAX creates its backends (the first
``jax.devices()`` or computation); the CLI, ``launch/train.py`` and the tests call it first.
It leaves ``XLA_FLAGS`` alone when it already sets a level (a long CPU training run, where step
time outweighs compile time, can set its own there), and when the job may run on an
accelerator (``JAX_PLATFORMS`` names another platform, or it is unset and a CUDA, ROCm or TPU
plugin is installed), where the flag would apply to the accelerator's compiler too.
"""

from __future__ import annotations

import importlib.metadata
import os

FLAG = "--xla_backend_optimization_level=2"
_ACCELERATOR_DISTRIBUTIONS = ("libtpu", "jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm")


def _accelerator_plugin_installed() -> bool:
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(_ACCELERATOR_DISTRIBUTIONS):
            return True
    return False


def prefer_fast_cpu_compiles() -> bool:
    """Add ``FLAG`` to ``XLA_FLAGS`` when JAX will run on the CPU only; True if it did."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return False
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    cpu_only = platforms == "cpu" or (not platforms and not _accelerator_plugin_installed())
    if not cpu_only:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    return True
