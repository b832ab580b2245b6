"""Shipped weights (vasa_jax.shipped): a trained probe round-trips through its npz + record,
corruption and absence are clear errors, and the package's own probe, motion estimator, SyncNet
and CAPP load with their checksums and held-out accuracy."""

import math
import shutil

import numpy as np
import pytest
from flax import nnx

from vasa_jax import shipped
from vasa_jax.instruments.load import load_probe, restore_probe
from vasa_jax.instruments.probe import SHIPPED_ESTIMATOR, SHIPPED_PROBE


def test_a_trained_probe_round_trips_and_corruption_is_caught(probe_run, tmp_path):
    workdir, config, _ = probe_run
    probe = restore_probe(workdir)
    model = nnx.merge(probe.graphdef, probe.state)
    heldout = {"r/jaw_open": 0.5, "r/blink": math.nan}
    assets = str(tmp_path / "assets")
    npz, meta = shipped.ship("tiny", model, kind="probe", config=config, step=probe.step,
                             heldout=heldout, command="pytest", assets=assets)
    back, rec = shipped.load("package:tiny", assets=assets)
    frames = np.random.RandomState(0).randint(0, 255, (3, 64, 64, 3)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(back(frames)[0]), np.asarray(model(frames)[0]))
    assert rec["step"] == probe.step and rec["heldout"]["r/jaw_open"] == 0.5
    assert math.isnan(rec["heldout"]["r/blink"])
    with pytest.raises(FileNotFoundError, match="package:tiny"):
        shipped.load("package:other", assets=assets)
    data = dict(np.load(npz))
    key = next(iter(data))
    data[key] = data[key] + 1.0
    shutil.copy(meta, meta + ".bak")
    with open(npz, "wb") as f:
        np.savez(f, **data)
    with pytest.raises(ValueError, match="checksum"):
        shipped.load("package:tiny", assets=assets)


def test_the_package_ships_the_probe_and_the_estimator():
    """Both load (checksums verified) with the held-out accuracy they were shipped with; they
    are different networks (the estimator is trained with another seed)."""
    probe, estimator = load_probe(SHIPPED_PROBE), load_probe(SHIPPED_ESTIMATOR)
    for p in (probe, estimator):
        assert p.heldout["r/jaw_open"] > 0.9 and p.heldout["r/yaw"] > 0.95
        assert p.heldout["split"] == "test"
    assert estimator.config.seed != probe.config.seed
    frames = np.random.RandomState(1).randint(0, 255, (2, 64, 64, 3)).astype(np.uint8)
    assert not np.allclose(probe.predict(frames)["motion"], estimator.predict(frames)["motion"])


def test_ship_cli_needs_the_heldout_file_then_ships(probe_run, tmp_path, capsys):
    from vasa_jax import cli
    from vasa_jax.train.heldout import write_heldout

    workdir = str(tmp_path / "probe")
    shutil.copytree(probe_run[0], workdir)
    assets = str(tmp_path / "assets")
    argv = ["ship", "--workdir", workdir, "--name", "mine", "--assets", assets]
    assert cli.main(argv) == 2  # no probe_heldout.json: an error naming the fix
    assert "write_heldout" in capsys.readouterr().err
    write_heldout(workdir, max_clips=2)
    assert cli.main(argv) == 0
    probe = shipped.load("package:mine", assets=assets)[1]
    assert probe["kind"] == "probe" and "r/jaw_open" in probe["heldout"]
    assert f"--workdir {workdir}" in probe["command"]


def test_the_package_ships_syncnet_and_capp(synthtalk_tiny):
    """The quality table's lip-sync and audio-pose instruments load (checksums verified) with
    the held-out accuracy they were shipped with, and SyncNet finds a SynthTalk clip in sync
    with its own speech and not with another clip's."""
    from data_pipeline.loader import decode_frame, open_source
    from vasa_jax.instruments.capp import SHIPPED_CAPP
    from vasa_jax.instruments.load import load_capp, load_syncnet
    from vasa_jax.instruments.syncnet import SHIPPED_SYNCNET, sync_scores
    from vasa_jax.media.audio import to_float32

    net, capp = load_syncnet(SHIPPED_SYNCNET), load_capp(SHIPPED_CAPP)
    assert net.heldout["split"] == capp.heldout["split"] == "test"
    assert net.heldout["offset_accuracy"] > 0.9
    assert net.heldout["lse_c"] > 3 * net.heldout["shuffled/lse_c"]
    assert capp.heldout["top1"] > 5 * capp.heldout["chance_top1"]
    assert shipped.record(SHIPPED_SYNCNET)["kind"] == "syncnet"
    assert shipped.record(SHIPPED_CAPP)["kind"] == "capp"
    source, _ = open_source("synthtalk", "res64_tiny", "train", synthtalk_tiny)
    clips = [source[i] for i in range(2)]
    frames = [np.stack([decode_frame(b) for b in c["frames"]]) for c in clips]
    audio = [to_float32(c["audio"]) for c in clips]
    own = sync_scores(net, frames[0], audio[0])
    other = sync_scores(net, frames[0], audio[1][:len(audio[0])])
    assert abs(own["offset"]) <= 1
    assert own["lse_c"] > 2 * other["lse_c"]
