"""Shared fixtures. Every test process sees 8 simulated CPU devices (set before JAX starts)."""

import json
import os
from typing import Any, Callable

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Trainers in different tests (and their subprocesses) compile the same programs: share them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from vasa_jax.xla_cpu import prefer_fast_cpu_compiles  # noqa: E402

prefer_fast_cpu_compiles()  # LLVM -O2: initialisation compiles ~6x faster

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_keys_dir(tmp_path_factory) -> str:
    """The generated C2PA and watermark keys live in a folder of this session (and of this
    xdist worker), never in the user's ``~/.config``. Tests that need their own use monkeypatch."""
    path = str(tmp_path_factory.mktemp("private_keys"))
    os.environ["VASA_JAX_C2PA_DIR"] = path
    return path


TINY = "res64_tiny"  # 6 identities x 2 clips x 25 frames at 64 px: train 8, validation 2, test 2


def once_per_run(tmp_path_factory, name: str, build: Callable[[str], Any]) -> Any:
    """``build(folder)`` (a fresh folder; it returns something JSON-able, e.g. paths in the
    folder) computed once per test run: under pytest-xdist the first worker to ask builds it
    and the others wait for it and read its result, so a shared fixture costs one build, not
    one per worker. Callers treat what it built as read-only."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(str(tmp_path_factory.mktemp(name)))
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # shared by this run's workers
    with FileLock(str(root / f"{name}.lock")):
        done = root / f"{name}.json"
        if done.exists():
            return json.loads(done.read_text())
        folder = root / name
        folder.mkdir()
        result = build(str(folder))
        done.write_text(json.dumps(result))
        return result


@pytest.fixture(scope="session")
def synthtalk_tiny(tmp_path_factory) -> str:
    """A data dir holding SynthTalk ``res64_tiny``, built once per test run."""

    def build(data_dir):
        from data_pipeline.synthtalk.synthtalk_dataset_builder import Synthtalk

        Synthtalk(config=TINY, data_dir=data_dir, workers=1).download_and_prepare()
        return data_dir

    return once_per_run(tmp_path_factory, "synthtalk_tiny", build)


@pytest.fixture(scope="session")
def voxceleb2_labelled(tmp_path_factory) -> tuple[str, str, str]:
    """(manual dir, data dir, config name): a fake VoxCeleb2 download of real H.264 mp4s at
    128 px (2 dev identities x 2 utterances; SynthTalk renders, which mediapipe's face mesh
    finds) built once per run at 64 px with the face-mesh labels (1 identity per split)."""

    def build(folder):
        from data_pipeline.voxceleb2 import fake_tree
        from data_pipeline.voxceleb2 import voxceleb2_dataset_builder as vb

        tree = fake_tree.write_fake_tree(os.path.join(folder, "manual"), dev_identities=2,
                                         test_identities=0, utterances_per_video=2, size=128,
                                         extras=False)
        data_dir = os.path.join(folder, "tfds")
        cfg = vb.make_config(64, 25, validation_fraction=0.5)
        vb.build_voxceleb2(tree.root, cfg, data_dir=data_dir)
        return tree.root, data_dir, cfg.name

    return tuple(once_per_run(tmp_path_factory, "voxceleb2_labelled", build))


@pytest.fixture(scope="session")
def stage1_workdir(synthtalk_tiny, tmp_path_factory) -> str:
    """A workdir with a stage-1 (``test`` variant) checkpoint after 2 steps on res64_tiny."""

    def build(wd):
        from configs import latent as latent_configs
        from vasa_jax.train.latent_task import LatentTask
        from vasa_jax.train.trainer import Trainer

        c = latent_configs.get_config("test")
        c.data.data_dir = synthtalk_tiny
        c.train.steps = 2
        c.num_devices = 1  # stage 1 compiles ~3x faster on one device than on the 8 simulated
        c.train.async_checkpoints = False
        c.train.eval_every = 0
        Trainer(LatentTask(c), c, wd).fit()
        return wd

    return once_per_run(tmp_path_factory, "stage1", build)


@pytest.fixture(scope="session")
def generation_workdirs(stage1_workdir, synthtalk_tiny, tmp_path_factory) -> tuple[str, str]:
    """(stage-1 workdir, stage-2 workdir): stage 2 (``test`` variant, 2 steps) trained on the
    latents of that stage 1 over res64_tiny: the smallest real pair generation can load."""

    def build(folder):
        from configs import motion as motion_configs
        from data_pipeline.latents import latents_dataset_builder as lb
        from vasa_jax.train.motion_task import MotionTask
        from vasa_jax.train.trainer import Trainer

        out = os.path.join(folder, "latents")
        c = motion_configs.get_config("test_latents")
        name = lb.build_latents("synthtalk", "res64_tiny", stage1_workdir, data_dir=out,
                                source_data_dir=synthtalk_tiny, audio=dict(c.audio))
        c.data.config, c.data.data_dir = name, out
        c.train.steps, c.train.async_checkpoints, c.num_devices = 2, False, 1
        wd = os.path.join(folder, "stage2")
        Trainer(MotionTask(c), c, wd).fit()
        return stage1_workdir, wd

    return tuple(once_per_run(tmp_path_factory, "stage2", build))


def _instrument_run(kind: str, data_dir: str, tmp_path_factory):
    """(workdir, config, fit result) of ``configs/<kind>.py:test`` trained once per run on
    res64_tiny (no held-out file yet: ``eval.heldout_after_training`` is off, so the tests can
    check the refusal without it)."""
    import importlib

    c = importlib.import_module(f"configs.{kind}").get_config("test")
    c.data.data_dir = data_dir
    c.eval.heldout_after_training = False
    c.num_devices = 1  # compiles several times faster than on the 8 simulated devices

    def build(workdir):
        from vasa_jax.train.tasks import make_task
        from vasa_jax.train.trainer import Trainer

        result = Trainer(make_task(c), c, workdir).fit()
        return workdir, {k: float(v) for k, v in result.items()}

    workdir, result = once_per_run(tmp_path_factory, kind, build)
    return workdir, c, result


@pytest.fixture(scope="session")
def probe_run(synthtalk_tiny, tmp_path_factory):
    """(workdir, config, fit result) of the SynthTalk probe's ``test`` variant on res64_tiny,
    trained once per run; the workdir has no held-out file (copy it before writing one)."""
    return _instrument_run("probe", synthtalk_tiny, tmp_path_factory)


@pytest.fixture(scope="session")
def syncnet_run(synthtalk_tiny, tmp_path_factory):
    """Like ``probe_run``, for SyncNet."""
    return _instrument_run("syncnet", synthtalk_tiny, tmp_path_factory)


@pytest.fixture(scope="session")
def capp_run(synthtalk_tiny, tmp_path_factory):
    """Like ``probe_run``, for CAPP."""
    return _instrument_run("capp", synthtalk_tiny, tmp_path_factory)
