"""What the web app and its real-time WebSocket run on: both stages loaded and compiled once,
the safety marks' signer and key, a bounded number of generations at once, and one request's
generation from checked inputs to a marked, verified mp4.

Every request works in its own folder under the service's work root; the folder is removed
when the request ends, however it ends (done, failed, or abandoned by a client that went away),
so nothing of a request stays on this machine's disk (the finished video is handed to the web
framework, which serves it from its own cache).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Iterator

import numpy as np

from vasa_jax.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
from vasa_jax.media.errors import InputError
from vasa_jax.pipeline import EMOTIONS, Controls, Source, TalkingFacePipeline

CONDITIONS = ("audio", "gaze", "distance", "emotion")


class Busy(RuntimeError):
    """Every generation slot stayed taken for the whole wait."""


def controls_from(defaults: Controls, *, gaze: tuple[float, float] | None = None,
                  distance: float | None = None, emotion: str | int | None = None,
                  cfg: dict[str, float] | None = None, steps: int | None = None,
                  seed: int = 0) -> Controls:
    """``Controls`` from a form's values (``emotion``: a name of ``EMOTIONS`` or its index,
    None / "" / "model's choice": dropped), the model's ``defaults`` where not given.
    InputError names the bad value."""
    if emotion in (None, "", "model's choice"):
        emotion = None
    elif isinstance(emotion, str) and not emotion.isdigit():
        if emotion not in EMOTIONS:
            raise InputError(f"emotion {emotion!r}: use one of {', '.join(EMOTIONS)}.")
        emotion = EMOTIONS.index(emotion)
    elif not 0 <= int(emotion) < len(EMOTIONS):
        raise InputError(f"emotion {emotion}: use 0-{len(EMOTIONS) - 1} "
                         f"({', '.join(EMOTIONS)}).")
    scales = dict(defaults.cfg)
    for name, value in (cfg or {}).items():
        if name not in CONDITIONS:
            raise InputError(f"CFG condition {name!r}: conditions are {', '.join(CONDITIONS)}.")
        if value is not None:
            scales[name] = float(value)
    steps = int(steps or defaults.steps)
    if not 1 <= steps <= 1000:
        raise InputError(f"steps {steps}: use 1-1000 denoising steps.")
    return Controls(gaze=None if gaze is None else (float(gaze[0]), float(gaze[1])),
                    distance=None if distance is None else float(distance),
                    emotion=None if emotion is None else int(emotion),
                    cfg=tuple(sorted(scales.items())), steps=steps,
                    sampler=defaults.sampler, seed=int(seed))


class TalkingFaceService:
    """A trained pipeline behind a web app (``from_workdirs``: the two trained runs).

    Args:
      pipe: the pipeline (both stages).
      max_concurrent: generations running at once; more requests wait for a slot.
      max_seconds: the longest speech a request may bring.
      size: output side in px (default: the model's, at least 256, where the watermark
        survives re-encoding).
      warm_strides: low-latency strides to compile at start-up besides W (the web page's).
      work_root: where requests' folders go (default: a new temporary folder).
      workdirs: the runs the pipeline came from (recorded in the videos' manifests).
    """

    def __init__(self, pipe: TalkingFacePipeline, *, max_concurrent: int = 1,
                 max_seconds: float = 60.0, size: int | None = None,
                 warm_strides: tuple[int, ...] = (), work_root: str | None = None,
                 workdirs: tuple[str, str] | None = None, load_seconds: float = 0.0):
        from vasa_jax.safety import keys, provenance
        from vasa_jax.safety.publish import MIN_OUTPUT_SIZE

        if max_concurrent < 1:
            raise InputError(f"max_concurrent {max_concurrent}: at least 1 generation must "
                             f"be allowed at once.")
        t0 = time.time()
        self.pipe = pipe
        self.identity = provenance.ensure_dev_certificate()
        self.watermark_key = keys.watermark_key()
        self.load_seconds = load_seconds + time.time() - t0
        self.workdirs = workdirs
        self.max_seconds, self.max_concurrent = float(max_seconds), int(max_concurrent)
        self.size = size or max(MIN_OUTPUT_SIZE, self.pipe.resolution)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._running = 0
        self._lock = threading.Lock()
        self._detect_lock = threading.Lock()
        self.work_root = work_root or tempfile.mkdtemp(prefix="vasa-jax-serve-")
        os.makedirs(self.work_root, exist_ok=True)
        t0 = time.time()
        self.warm_up((self.pipe.window,) + tuple(warm_strides))
        self.compile_seconds = time.time() - t0

    @classmethod
    def from_workdirs(cls, latent_workdir: str, motion_workdir: str, *,
                      max_seconds: float = 60.0, **kwargs) -> "TalkingFaceService":
        """The service for two trained runs (checked as ``vasa-jax generate`` checks them)."""
        from vasa_jax.media import checks

        checks.check_runs(latent_workdir, motion_workdir)
        t0 = time.time()
        pipe = TalkingFacePipeline.from_checkpoints(latent_workdir, motion_workdir,
                                                    max_seconds=max_seconds)
        return cls(pipe, max_seconds=max_seconds, workdirs=(latent_workdir, motion_workdir),
                   load_seconds=time.time() - t0, **kwargs)

    # -- start-up ----------------------------------------------------------------------------
    def warm_up(self, strides: tuple[int, ...]) -> None:
        """Compile the window program for the default controls at each stride (one short
        generation from a blank face and a tone each), so the first request does not wait."""
        r = self.pipe.resolution
        source = self.pipe.prepare_source(np.full((r, r, 3), 128, np.uint8), detect=False)
        t = np.arange(SAMPLES_PER_FRAME * 2) / SAMPLE_RATE
        tone = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        for s in dict.fromkeys(strides):
            for _ in self.pipe.stream(source, [tone], self.pipe.defaults, stride=s):
                pass

    def close(self) -> None:
        shutil.rmtree(self.work_root, ignore_errors=True)

    # -- requests ----------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return self._running

    @contextlib.contextmanager
    def slot(self, timeout: float | None = None) -> Iterator[None]:
        """Hold one of the ``max_concurrent`` generation slots (waiting up to ``timeout``
        seconds; Busy after that)."""
        if not self._slots.acquire(timeout=timeout if timeout is not None else -1):
            raise Busy(f"All {self.max_concurrent} generation slots stayed busy for "
                       f"{timeout:.0f} s; try again shortly.")
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()

    @contextlib.contextmanager
    def request_dir(self) -> Iterator[str]:
        """A folder for one request, removed when the request ends, however it ends."""
        path = tempfile.mkdtemp(prefix="req-", dir=self.work_root)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def source(self, photo_path: str) -> Source:
        """A portrait photo -> the appearance the pipeline animates (checked as the CLI checks
        it: readable, one face, large enough). InputError otherwise."""
        from vasa_jax.media import checks

        if not photo_path:
            raise InputError("No portrait photo: upload one or pick an example.")
        with self._detect_lock:  # mediapipe's face graphs are not safe to run concurrently
            crop = checks.check_photo(photo_path, self.pipe.resolution)
        return self.pipe.prepare_source(crop, detect=False)

    def speech(self, audio_path: str) -> np.ndarray:
        """A speech file -> (S,) 16 kHz float32 (checked as the CLI checks it: decodable, not
        empty, not silent, not longer than ``max_seconds``). InputError otherwise."""
        from vasa_jax.media.audio import load_speech

        if not audio_path:
            raise InputError("No speech: upload a recording or record one with the microphone.")
        return load_speech(audio_path, max_seconds=self.max_seconds)

    def generate(self, photo_path: str, audio_path: str, controls: Controls, out_dir: str,
                 *, stride: int | None = None) -> Iterator[dict[str, Any]]:
        """One request, as events: ``{"event": "window", "frames": (n, R, R, 3) uint8,
        "done": frames so far, "total": frames}`` as each window is generated, then
        ``{"event": "video", "path": the marked mp4 in out_dir, "verify": VerifyReport}``.
        Inputs are checked before any generation; InputError names what is wrong."""
        from vasa_jax.media.video_io import resize_frames
        from vasa_jax.safety.publish import marked_video_writer, verify_video

        source = self.source(photo_path)
        audio = self.speech(audio_path)
        total = -(-audio.size // SAMPLES_PER_FRAME)
        path = os.path.join(out_dir, "talking_face.mp4")
        generation = {"model": "vasa_jax", "app": "vasa-jax serve", "seed": controls.seed,
                      "steps": controls.steps, "sampler": controls.sampler,
                      "cfg": dict(controls.cfg), "gaze": controls.gaze,
                      "distance": controls.distance, "emotion": controls.emotion}
        if self.workdirs:
            generation.update(latent_workdir=self.workdirs[0], motion_workdir=self.workdirs[1])
        done = 0
        with marked_video_writer(path, self.size, self.size, identity=self.identity,
                                 generation=generation,
                                 watermark_key=self.watermark_key) as writer:
            for part in self.pipe.stream(source, [audio], controls, stride=stride):
                n = len(part)
                writer.write(resize_frames(part, self.size),
                             audio[done * SAMPLES_PER_FRAME:(done + n) * SAMPLES_PER_FRAME])
                done += n
                yield {"event": "window", "frames": part, "done": done, "total": total}
            writer.write(None, audio[done * SAMPLES_PER_FRAME:])
        yield {"event": "video", "path": path,
               "verify": verify_video(path, watermark_key=self.watermark_key)}
