"""Shared fixtures. Every test process sees 8 simulated CPU devices (set before JAX starts)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Trainers in different tests (and their subprocesses) compile the same programs: share them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

TINY = "res64_tiny"  # 6 identities x 2 clips x 25 frames at 64 px: train 8, validation 2, test 2


@pytest.fixture(scope="session")
def synthtalk_tiny(tmp_path_factory) -> str:
    """A data dir holding SynthTalk ``res64_tiny``, built once per test session."""
    from data_pipeline.synthtalk.synthtalk_dataset_builder import Synthtalk

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    Synthtalk(config=TINY, data_dir=data_dir, workers=1).download_and_prepare()
    return data_dir
