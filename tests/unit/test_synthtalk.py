"""SynthTalk generation: fields, determinism, splits, and ground truth that agrees with the
pixels and the sound."""

import numpy as np
import pytest

from data_pipeline.synthtalk import generate, motion as motion_lib, phones as ph
from data_pipeline.synthtalk.motion import FIELD, MOTION_DIM
from mouth_pixels import dark_mouth_pixels
from vasa_jax.constants import SAMPLES_PER_FRAME

T = 75


@pytest.fixture(scope="module")
def clips64():
    """Twelve 3-s clips at 64 px from twelve identities."""
    return [generate.generate_clip(0, i, 1, T, 64) for i in range(12)]


def test_fields_shapes_and_ranges(clips64):
    for c in clips64:
        assert c["frames"].shape == (T, 64, 64, 3) and c["frames"].dtype == np.uint8
        assert c["audio"].shape == (T * SAMPLES_PER_FRAME,) and c["audio"].dtype == np.float32
        assert 0.1 < np.abs(c["audio"]).max() <= 1.0
        assert c["motion"].shape == (T, MOTION_DIM) and c["motion"].dtype == np.float32
        assert c["phones"].shape == (T,) and c["phones"].min() >= 0
        assert c["phones"].max() < len(ph.PHONES)
        assert c["gaze"].shape == (2,) and 0.0 <= c["distance"] <= 1.0
        assert c["emotion"] in range(len(motion_lib.EMOTIONS))
        m = c["motion"]
        for name in ("jaw_open", "lip_width", "lip_round", "blink"):
            assert 0.0 <= m[:, FIELD[name]].min() and m[:, FIELD[name]].max() <= 1.0
        np.testing.assert_allclose(m[:, FIELD["gaze_x"]].mean(), c["gaze"][0], atol=0.05)


@pytest.mark.parametrize("resolution", [24, 96, 130])
def test_renderer_works_at_any_resolution(resolution):
    c = generate.generate_clip(3, 1, 0, 4, resolution)
    assert c["frames"].shape == (4, resolution, resolution, 3)
    assert c["frames"].std() > 10  # a picture, not a flat fill


def test_same_inputs_give_identical_bytes():
    a = generate.generate_clip(7, 3, 2, 20, 64)
    b = generate.generate_clip(7, 3, 2, 20, 64)
    for k in a:
        assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), k
    c = generate.generate_clip(7, 3, 3, 20, 64)
    assert a["audio"].tobytes() != c["audio"].tobytes()
    assert a["frames"].tobytes() != c["frames"].tobytes()


def test_identity_splits_are_disjoint_and_cover():
    for n in (3, 6, 10, 100, 1000):
        s = generate.identity_splits(n)
        ids = [set(s[k]) for k in generate.SPLITS]
        assert all(ids), n
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
        assert set().union(*ids) == set(range(n))
    with pytest.raises(ValueError, match="at least 3 identities"):
        generate.identity_splits(2)


def test_closed_lips_in_ground_truth_are_closed_in_pixels(clips64):
    """Frames whose ground truth has the lips together (m/b/p and rests) show no mouth opening
    on the pixels; frames with a wide-open jaw show one; the pixel opening tracks jaw_open."""
    counts, jaws, bilabial_closed = [], [], 0
    for c in clips64:
        n = dark_mouth_pixels(c["frames"], c["motion"])
        jaw = c["motion"][:, FIELD["jaw_open"]]
        closed = jaw == 0.0
        assert n[closed].max(initial=0) <= 1
        # The lips lead the sound by a frame: frame k shows the phone sounding at frame k + 1.
        lead_phone = np.append(c["phones"][1:], ph.SILENCE)
        bilabial = np.isin(lead_phone, ph.BILABIALS) & closed
        bilabial_closed += int(bilabial.sum())
        assert n[bilabial].max(initial=0) <= 1
        counts.append(n)
        jaws.append(jaw)
    counts, jaws = np.concatenate(counts), np.concatenate(jaws)
    assert bilabial_closed >= 20  # the check above ran on many m/b/p closures
    assert np.median(counts[jaws > 0.6]) >= 4
    assert np.corrcoef(counts, jaws)[0, 1] > 0.8


def test_bilabials_close_the_lips():
    """Most m/b/p phones reach a full closure despite coarticulation smoothing."""
    reached, total = 0, 0
    for i in range(20):
        tr = generate.clip_tracks(0, i, 0, T)
        jaw = tr.motion[:, FIELD["jaw_open"]]
        u = tr.utterance
        for p, s, d in zip(u.phones, u.starts, u.durations):
            k0, k1 = int(np.ceil(s * 25)) - 1, int(np.floor((s + d) * 25)) - 1  # lead: one frame
            if p in ph.BILABIALS and d >= 0.08 and 0 <= k0 and k1 < T and k1 >= k0:
                total += 1
                reached += jaw[k0:k1 + 1].min() == 0.0
    assert total > 30 and reached / total > 0.9


def test_lips_lead_the_sound_by_one_frame():
    """The mouth track equals the no-lead track shifted one frame earlier, and the
    cross-correlation of the mouth with the phones' jaw targets peaks one frame earlier too."""
    lags = np.arange(-5, 6)
    xc_lead, xc_none = np.zeros(len(lags)), np.zeros(len(lags))
    for i in range(30):
        tr = generate.clip_tracks(1, i, 0, T)
        with_lead = motion_lib.mouth_track(tr.utterance, T)
        no_lead = motion_lib.mouth_track(tr.utterance, T, lead_frames=0)
        np.testing.assert_allclose(with_lead, tr.motion[:, FIELD["jaw_open"]:FIELD["lip_round"] + 1])
        np.testing.assert_allclose(with_lead[:-1], no_lead[1:], atol=1e-6)
        target = ph.VISEME_TARGETS[tr.phones, 0]
        for j, lag in enumerate(lags):  # corr(mouth[k], target[k + lag])
            a = slice(max(0, -lag), T - max(0, lag))
            b = slice(max(0, lag), T - max(0, -lag))
            xc_lead[j] += np.corrcoef(with_lead[a, 0], target[b])[0, 1]
            xc_none[j] += np.corrcoef(no_lead[a, 0], target[b])[0, 1]
    assert lags[np.argmax(xc_lead)] - lags[np.argmax(xc_none)] == 1


def test_audio_is_aligned_with_the_frames():
    """Per-frame audio energy (samples [640k, 640(k+1))) follows the per-frame phones at lag 0:
    loud on vowels, near-silent inside pauses."""
    lags = np.arange(-3, 4)
    xc = np.zeros(len(lags))
    quiet, loud = [], []
    for i in range(20):
        tr = generate.clip_tracks(2, i, 0, T)
        rms = np.sqrt((tr.audio.reshape(T, SAMPLES_PER_FRAME) ** 2).mean(axis=1))
        vowel = np.isin(tr.phones, ph.VOWELS).astype(float)
        sil = tr.phones == ph.SILENCE
        inner_sil = sil & np.roll(sil, 1) & np.roll(sil, -1)
        quiet.extend(rms[inner_sil])
        loud.extend(rms[vowel > 0])
        for j, lag in enumerate(lags):
            a = slice(max(0, -lag), T - max(0, lag))
            b = slice(max(0, lag), T - max(0, -lag))
            xc[j] += np.corrcoef(rms[a], vowel[b])[0, 1]
    assert lags[np.argmax(xc)] == 0
    assert np.median(quiet) < 0.01 < 0.05 < np.median(loud)


def test_blinks_head_motion_and_nods():
    blinks, dp, nod_gain = 0, [], []
    for i in range(30):
        tr = generate.clip_tracks(4, i, 0, T)
        b = tr.motion[:, FIELD["blink"]]
        blinks += int(((b >= 0.99) & ~np.roll(b >= 0.99, 1)).sum())
        dp.append(np.abs(np.diff(tr.motion[:, :3], axis=0)).mean())
        nod_gain.append(motion_lib.nod_track(tr.utterance, T, 1.0, np.random.default_rng(0)).max())
    rate = blinks / (30 * T / 25)
    assert 1 / 6 < rate < 1 / 2  # about one blink per 3-4 s
    assert 0.002 < np.mean(dp) < 0.05  # radians per frame
    assert np.mean(np.array(nod_gain) > 0) > 0.8  # stressed syllables drive nods in most clips
