"""Shared fixtures. Every test process sees 8 simulated CPU devices (set before JAX starts)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Trainers in different tests (and their subprocesses) compile the same programs: share them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from vasa_jax.xla_cpu import prefer_fast_cpu_compiles  # noqa: E402

prefer_fast_cpu_compiles()  # LLVM -O1: the same step speed, compiles up to 7x faster

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_keys_dir(tmp_path_factory) -> str:
    """The generated C2PA and watermark keys live in a folder of this session (and of this
    xdist worker), never in the user's ``~/.config``. Tests that need their own use monkeypatch."""
    path = str(tmp_path_factory.mktemp("private_keys"))
    os.environ["VASA_JAX_C2PA_DIR"] = path
    return path

TINY = "res64_tiny"  # 6 identities x 2 clips x 25 frames at 64 px: train 8, validation 2, test 2


@pytest.fixture(scope="session")
def synthtalk_tiny(tmp_path_factory) -> str:
    """A data dir holding SynthTalk ``res64_tiny``, built once per test session."""
    from data_pipeline.synthtalk.synthtalk_dataset_builder import Synthtalk

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    Synthtalk(config=TINY, data_dir=data_dir, workers=1).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def voxceleb2_labelled(tmp_path_factory) -> tuple[str, str, str]:
    """(manual dir, data dir, config name): a fake VoxCeleb2 download of real H.264 mp4s at
    128 px (2 dev identities x 2 utterances; SynthTalk renders, which mediapipe's face mesh
    finds) built once per session at 64 px with the face-mesh labels (1 identity per split)."""
    from data_pipeline.voxceleb2 import fake_tree
    from data_pipeline.voxceleb2 import voxceleb2_dataset_builder as vb

    tree = fake_tree.write_fake_tree(str(tmp_path_factory.mktemp("vox_manual")),
                                     dev_identities=2, test_identities=0,
                                     utterances_per_video=2, size=128, extras=False)
    data_dir = str(tmp_path_factory.mktemp("vox_tfds"))
    cfg = vb.make_config(64, 25, validation_fraction=0.5)
    vb.build_voxceleb2(tree.root, cfg, data_dir=data_dir)
    return tree.root, data_dir, cfg.name


@pytest.fixture(scope="session")
def stage1_workdir(synthtalk_tiny, tmp_path_factory) -> str:
    """A workdir with a stage-1 (``test`` variant) checkpoint after 2 steps on res64_tiny."""
    from configs import latent as latent_configs
    from vasa_jax.train.latent_task import LatentTask
    from vasa_jax.train.trainer import Trainer

    c = latent_configs.get_config("test")
    c.data.data_dir = synthtalk_tiny
    c.train.steps = 2
    c.num_devices = 1  # stage 1 compiles ~3x faster on one device than on the 8 simulated
    c.train.async_checkpoints = False
    c.train.eval_every = 0
    wd = str(tmp_path_factory.mktemp("stage1"))
    Trainer(LatentTask(c), c, wd).fit()
    return wd


@pytest.fixture(scope="session")
def generation_workdirs(stage1_workdir, synthtalk_tiny, tmp_path_factory) -> tuple[str, str]:
    """(stage-1 workdir, stage-2 workdir): stage 2 (``test`` variant, 2 steps) trained on the
    latents of that stage 1 over res64_tiny: the smallest real pair generation can load."""
    from configs import motion as motion_configs
    from data_pipeline.latents import latents_dataset_builder as lb
    from vasa_jax.train.motion_task import MotionTask
    from vasa_jax.train.trainer import Trainer

    out = str(tmp_path_factory.mktemp("latents"))
    c = motion_configs.get_config("test_latents")
    name = lb.build_latents("synthtalk", "res64_tiny", stage1_workdir, data_dir=out,
                            source_data_dir=synthtalk_tiny, audio=dict(c.audio))
    c.data.config, c.data.data_dir = name, out
    c.train.steps, c.train.async_checkpoints, c.num_devices = 2, False, 1
    wd = str(tmp_path_factory.mktemp("stage2"))
    Trainer(MotionTask(c), c, wd).fit()
    return stage1_workdir, wd


def _train_instrument(kind: str, data_dir: str, workdir: str):
    """Train ``configs/<kind>.py:test`` on res64_tiny into ``workdir`` (no held-out file yet:
    ``eval.heldout_after_training`` is off, so the tests can check the refusal without it)."""
    import importlib

    from vasa_jax.train.tasks import make_task
    from vasa_jax.train.trainer import Trainer

    c = importlib.import_module(f"configs.{kind}").get_config("test")
    c.data.data_dir = data_dir
    c.eval.heldout_after_training = False
    c.num_devices = 1  # compiles several times faster than on the 8 simulated devices
    result = Trainer(make_task(c), c, workdir).fit()
    return workdir, c, result


@pytest.fixture(scope="session")
def probe_run(synthtalk_tiny, tmp_path_factory):
    """(workdir, config, fit result) of the SynthTalk probe's ``test`` variant on res64_tiny,
    trained once per session; the workdir has no held-out file (copy it before writing one)."""
    return _train_instrument("probe", synthtalk_tiny, str(tmp_path_factory.mktemp("probe")))


@pytest.fixture(scope="session")
def syncnet_run(synthtalk_tiny, tmp_path_factory):
    """Like ``probe_run``, for SyncNet."""
    return _train_instrument("syncnet", synthtalk_tiny, str(tmp_path_factory.mktemp("syncnet")))


@pytest.fixture(scope="session")
def capp_run(synthtalk_tiny, tmp_path_factory):
    """Like ``probe_run``, for CAPP."""
    return _train_instrument("capp", synthtalk_tiny, str(tmp_path_factory.mktemp("capp")))
