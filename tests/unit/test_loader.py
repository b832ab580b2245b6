"""The grain loader: determinism, starting at any batch, process sharding, windows with
aligned audio, augmentation, and global batches on an 8-device mesh."""

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import TINY
from data_pipeline import loader as loader_lib
from data_pipeline.loader import LoaderConfig, make_loader, open_source
from data_pipeline.synthtalk.motion import FIELD
from vasa_jax import parallel
from vasa_jax.constants import SAMPLES_PER_FRAME


def _cfg(data_dir, **kw):
    base = dict(config=TINY, data_dir=data_dir, num_frames=10, batch_size=2, seed=3)
    base.update(kw)
    return LoaderConfig(**base)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_layout(synthtalk_tiny):
    b = next(iter(make_loader(_cfg(synthtalk_tiny))))
    assert b["frames"].shape == (2, 10, 64, 64, 3) and b["frames"].dtype == np.uint8
    assert b["audio"].shape == (2, 10 * SAMPLES_PER_FRAME) and b["audio"].dtype == np.float32
    assert b["motion"].shape == (2, 10, 12) and b["phones"].shape == (2, 10)
    assert b["gaze"].shape == (2, 2) and b["distance"].shape == (2,)
    for k in ("identity", "clip", "emotion", "start"):
        assert b[k].shape == (2,) and b[k].dtype == np.int32


def test_same_seed_same_batches_other_seed_other_batches(synthtalk_tiny):
    a = _take(iter(make_loader(_cfg(synthtalk_tiny))), 6)
    b = _take(iter(make_loader(_cfg(synthtalk_tiny))), 6)
    _assert_same(a, b)
    c = _take(iter(make_loader(_cfg(synthtalk_tiny, seed=4))), 6)
    assert any(not np.array_equal(x["frames"], y["frames"]) for x, y in zip(a, c))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stream_started_at_batch_s_is_the_rest_of_the_stream(synthtalk_tiny, workers):
    """Started at global batch 3 (8 clips, batch 2: 3 of 4 batches of an epoch in), the next
    batches, across the epoch boundary, equal the uninterrupted stream's, with or without worker
    processes, and two process shards started there join into the one-process batches: what a
    run resumed at step 3 on any process count reads."""
    expected = _take(iter(make_loader(_cfg(synthtalk_tiny))), 7)[3:]
    started = iter(make_loader(_cfg(synthtalk_tiny, worker_count=workers), start_batch=3))
    _assert_same(_take(started, 4), expected)
    shards = [_take(iter(make_loader(_cfg(synthtalk_tiny, batch_size=1, shard_index=p,
                                          shard_count=2), start_batch=3)), 4) for p in range(2)]
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*shards)]
    _assert_same(joined, expected)
    with pytest.raises(ValueError, match="start_batch"):
        make_loader(_cfg(synthtalk_tiny), start_batch=-1)


def test_process_shards_are_disjoint_and_cover_the_split(synthtalk_tiny):
    seen = []
    for shard in range(2):
        cfg = _cfg(synthtalk_tiny, batch_size=1, num_epochs=1, drop_remainder=False,
                   shard_index=shard, shard_count=2)
        seen.append({(int(b["identity"][0]), int(b["clip"][0])) for b in make_loader(cfg)})
    source, _ = open_source("synthtalk", TINY, "train", synthtalk_tiny)
    everything = {(int(source[i]["identity"]), int(source[i]["clip"])) for i in range(len(source))}
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == everything


def test_window_matches_the_stored_clip(synthtalk_tiny):
    source, _ = open_source("synthtalk", TINY, "train", synthtalk_tiny)
    by_key = {(int(source[i]["identity"]), int(source[i]["clip"])): source[i]
              for i in range(len(source))}
    cfg = _cfg(synthtalk_tiny, augment=False, batch_size=4)
    starts = set()
    for b in _take(iter(make_loader(cfg)), 4):
        for j in range(4):
            ex = by_key[(int(b["identity"][j]), int(b["clip"][j]))]
            s = int(b["start"][j])
            starts.add(s)
            np.testing.assert_array_equal(b["motion"][j], ex["motion"][s:s + 10])
            np.testing.assert_array_equal(b["phones"][j], ex["phones"][s:s + 10])
            np.testing.assert_array_equal(
                b["audio"][j], ex["audio"][s * 640:(s + 10) * 640].astype(np.float32) / 32768)
            np.testing.assert_array_equal(b["frames"][j, 0],
                                          loader_lib.decode_frame(ex["frames"][s]))
    assert len(starts) > 3  # windows start at random frames


def test_impulse_at_frame_k_lands_in_its_640_samples(tmp_path, monkeypatch):
    """A dataset whose clip c has a white frame and an audio impulse both at frame k_c: every
    loaded window finds the impulse inside the samples of the white frame."""
    from data_pipeline.synthtalk import parallel as gen_parallel
    from data_pipeline.synthtalk.synthtalk_dataset_builder import Synthtalk, make_config

    real = gen_parallel.generate_clip

    def with_marker(seed, identity, clip, num_frames, resolution):
        ex = real(seed, identity, clip, num_frames, resolution)
        k = 5 + 3 * identity + clip
        ex["audio"] = np.zeros_like(ex["audio"])
        ex["audio"][k * SAMPLES_PER_FRAME + 17 + 31 * clip] = 0.9
        ex["frames"][k] = 255
        return ex

    monkeypatch.setattr(gen_parallel, "generate_clip", with_marker)
    cfg = make_config(32, "tiny", num_frames=40)
    Synthtalk(config=cfg, data_dir=str(tmp_path), workers=1).download_and_prepare()
    lc = LoaderConfig(config=cfg.name, data_dir=str(tmp_path), num_frames=24, batch_size=4,
                      augment=False, seed=1)
    found = 0
    for b in _take(iter(make_loader(lc)), 6):
        for j in range(4):
            white = np.flatnonzero(b["frames"][j].reshape(24, -1).min(axis=1) == 255)
            peak = np.flatnonzero(np.abs(b["audio"][j]) > 0.5)
            assert len(white) == len(peak) <= 1
            if len(white):
                found += 1
                assert white[0] * 640 <= peak[0] < (white[0] + 1) * 640
    assert found >= 6


def test_flip_mirrors_frames_and_ground_truth(synthtalk_tiny):
    plain = next(iter(make_loader(_cfg(synthtalk_tiny, augment=False))))
    flipped = next(iter(make_loader(_cfg(synthtalk_tiny, flip_prob=1.0, colour_jitter=0.0))))
    np.testing.assert_array_equal(flipped["frames"], plain["frames"][:, :, :, ::-1])
    for name in ("yaw", "roll", "tx", "gaze_x"):
        np.testing.assert_array_equal(flipped["motion"][..., FIELD[name]],
                                      -plain["motion"][..., FIELD[name]])
    for name in ("pitch", "jaw_open", "blink", "gaze_y"):
        np.testing.assert_array_equal(flipped["motion"][..., FIELD[name]],
                                      plain["motion"][..., FIELD[name]])
    np.testing.assert_array_equal(flipped["gaze"], plain["gaze"] * [-1, 1])
    np.testing.assert_array_equal(flipped["audio"], plain["audio"])


def test_global_batch_sharding_on_8_devices(synthtalk_tiny):
    assert jax.device_count() == 8
    mesh = parallel.create_mesh((2, 2, 2))
    local = next(iter(make_loader(_cfg(synthtalk_tiny, batch_size=4))))
    g = parallel.global_batch(local, mesh)
    assert g["frames"].shape == local["frames"].shape  # one process: global == local
    assert g["frames"].sharding.spec == P(("data", "fsdp"), None, None, None, None)
    assert g["identity"].sharding.spec == P(("data", "fsdp"))
    # Batch rows split over data x fsdp = 4 ways, replicated over tensor = 2.
    shards = g["frames"].addressable_shards
    assert len(shards) == 8 and all(s.data.shape[0] == 1 for s in shards)
    for s in shards:
        np.testing.assert_array_equal(np.asarray(s.data), local["frames"][s.index])
    np.testing.assert_array_equal(np.asarray(g["audio"]), local["audio"])


def test_missing_dataset_gives_a_clear_error(tmp_path):
    with pytest.raises(loader_lib.DatasetNotFoundError,
                       match="vasa-jax data build synthtalk --config res64_small"):
        make_loader(LoaderConfig(data_dir=str(tmp_path)))


def test_bad_split_and_window_give_clear_errors(synthtalk_tiny):
    with pytest.raises(ValueError, match="Split 'dev'"):
        make_loader(_cfg(synthtalk_tiny, split="dev"))
    it = iter(make_loader(_cfg(synthtalk_tiny, num_frames=200)))
    with pytest.raises(Exception, match="asks for windows of 200"):
        next(it)


def test_loader_config_is_hashable_and_complete():
    cfg = LoaderConfig()
    assert dataclasses.replace(cfg, seed=1) != cfg
    hash(cfg)


def test_global_batch_is_independent_of_the_process_count(synthtalk_tiny):
    """Two processes with per-process batch 2 load exactly the rows, in order, that one process
    with batch 4 loads: the global stream does not depend on the process count."""
    one = _take(iter(make_loader(_cfg(synthtalk_tiny, batch_size=4))), 5)
    halves = [_take(iter(make_loader(_cfg(synthtalk_tiny, batch_size=2, shard_index=p,
                                           shard_count=2))), 5) for p in range(2)]
    for s in range(5):
        joined = {k: np.concatenate([halves[0][s][k], halves[1][s][k]]) for k in one[s]}
        _assert_same([joined], [one[s]])


def test_motion_only_batches_skip_the_pixels(synthtalk_tiny):
    b = next(iter(make_loader(_cfg(synthtalk_tiny, frames=False))))
    assert "frames" not in b and b["motion"].shape == (2, 10, 12)


def test_clip_transforms_feed_the_window_and_the_cache_keeps_batches_identical(synthtalk_tiny):
    """A whole-clip transform's per-frame output is windowed with the motion; caching prepared
    clips changes nothing in the batches; frames/audio can be left out."""
    from vasa_jax.motion.audio import AddAudioFeatures, make_frontend

    fe = AddAudioFeatures(make_frontend("mel", n_mels=8))
    kw = dict(frames=False, audio=False, num_epochs=3)
    plain = _take(iter(make_loader(_cfg(synthtalk_tiny, **kw), clip_transforms=[fe])), 10)
    cached = _take(iter(make_loader(_cfg(synthtalk_tiny, cache_clips=100, **kw),
                                    clip_transforms=[fe])), 10)
    _assert_same(plain, cached)
    b = plain[0]
    assert "frames" not in b and "audio" not in b and b["audio_features"].shape == (2, 10, 32)
    source, _ = open_source("synthtalk", TINY, "train", synthtalk_tiny)
    by_key = {(int(source[i]["identity"]), int(source[i]["clip"])): source[i]
              for i in range(len(source))}
    ex = by_key[(int(b["identity"][0]), int(b["clip"][0]))]
    s = int(b["start"][0])
    whole = fe({"audio": ex["audio"].astype(np.float32) / 32768})["audio_features"]
    np.testing.assert_allclose(b["audio_features"][0], whole[s:s + 10], rtol=1e-6)


def test_driver_from_another_clip_of_the_same_identity(synthtalk_tiny):
    source, _ = open_source("synthtalk", TINY, "train", synthtalk_tiny)
    cfg = _cfg(synthtalk_tiny, augment=False, batch_size=4, num_frames=2, random_frames=2,
               audio=False, other_clip_driver=1.0)
    swapped = 0
    for b in _take(iter(make_loader(cfg)), 4):
        assert "emotion" not in b and "driver_clip" in b
        for j in range(4):
            drv = source[int(b["driver_clip"][j])]
            assert int(drv["identity"]) == int(b["identity"][j])  # always the same person
            swapped += int(drv["clip"]) != int(b["clip"][j])
            t = int(b["frame_index"][j, 1])
            np.testing.assert_array_equal(b["frames"][j, 1],
                                          loader_lib.decode_frame(drv["frames"][t]))
            np.testing.assert_array_equal(b["motion"][j, 1], drv["motion"][t])
    assert swapped == 16  # every tiny identity has a second clip in its split
    with pytest.raises(ValueError, match="random_frames=2"):
        make_loader(_cfg(synthtalk_tiny, other_clip_driver=0.5))


@pytest.mark.reliability
def test_undecodable_frame_and_the_skip_tally():
    """A frame that does not decode is a ``BadRecord`` of reason ``bad_frame`` (still a
    ValueError); ``SkippedRecords`` takes the counts out of the batch, sums them and judges the
    share only after ``judge_after`` records."""
    with pytest.raises(loader_lib.BadRecord, match="Could not decode") as err:
        loader_lib.decode_frame(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert err.value.reason == "bad_frame" and isinstance(err.value, ValueError)
    tally = loader_lib.SkippedRecords("synthtalk/x", max_fraction=0.2, judge_after=20)
    row = np.zeros((4, len(loader_lib.SKIP_REASONS)), np.int32)
    row[0, loader_lib.SKIP_REASONS.index("short_audio")] = 2
    for _ in range(3):
        batch = {"skipped_records": row.copy(), "pos": np.arange(4)}
        tally.add(batch)
        assert "skipped_records" not in batch
    counts, used = tally.totals()
    assert used == 12 and counts[loader_lib.SKIP_REASONS.index("short_audio")] == 6
    tally.check(counts, used)  # 6 of 18 read: above 0.2, but fewer than 20 records read
    tally.add({"skipped_records": row.copy()})
    with pytest.raises(loader_lib.TooManyBadRecords, match="8 of the 24 records .*short_audio 8"):
        tally.check(*tally.totals())


def test_every_batch_row_counts_its_skipped_records(synthtalk_tiny):
    b = next(iter(make_loader(_cfg(synthtalk_tiny))))
    assert b["skipped_records"].shape == (2, len(loader_lib.SKIP_REASONS))
    assert not b["skipped_records"].any()
