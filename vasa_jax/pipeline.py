"""Talking-face generation: one portrait photo + a speech track -> video frames (VASA-1 §3.3).

``TalkingFacePipeline`` joins the two trained stages:
  photo -> face detection -> crop to the training framing -> ``V_app``, ``z_id`` (once);
  audio (any file PyAV decodes) -> 16 kHz mono -> frontend features (one row per 25 fps frame);
  per window of W frames: motion diffusion (every denoising step, multi-condition CFG in one
  batched call) -> [z_pose, z_dyn] per frame -> stage-1 decoder -> frames.

Offline generation (``generate``) is ONE jit-compiled program: a ``lax.scan`` of the window
step over all windows (the last one padded, the output trimmed). Streaming (``stream``) runs the
same window step (the same scan, one window at a time) as soon as a window's audio has arrived,
and yields its frames; for the same seed it gives the offline output bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.constants import SAMPLES_PER_FRAME
from vasa_jax.latent.model import FaceLatentModel, to_uint8, to_unit
from vasa_jax.latent.warp import POSE_DIM
from vasa_jax.media.audio import check_offline_length
from vasa_jax.media.errors import InputError
from vasa_jax.media.face_crop import SYNTHTALK_FRAMING, Framing, crop_face
from vasa_jax.motion import diffusion
from vasa_jax.motion.audio import AudioFrontend, features_for_frames
from vasa_jax.motion.dit import MotionDiT
from vasa_jax.motion.generate import (WindowCarry, init_carry, split_windows, window_conditions,
                                     window_step)

EMOTIONS = ("neutral", "happy", "sad", "surprised")  # SynthTalk's classes, by index


@dataclasses.dataclass(frozen=True)
class Controls:
    """What the user steers. A condition left as None is dropped (the model's learned null:
    it picks that attribute itself).

    gaze: main gaze direction (theta, phi) in radians; distance: normalised head-to-camera
    distance; emotion: class index (``EMOTIONS``); cfg: guidance scale per condition (audio,
    gaze, distance, emotion; VASA-1 eq. 2); steps: denoising steps per window (50 default, 10
    fast); sampler: "ddim" or "ddpm"; eta: DDIM noise; seed: the generation's randomness."""

    gaze: tuple[float, float] | None = None
    distance: float | None = None
    emotion: int | None = None
    cfg: tuple[tuple[str, float], ...] = (("audio", 0.5), ("gaze", 1.0))
    steps: int = 50
    sampler: str = "ddim"
    eta: float = 0.0
    seed: int = 0

    def conditions(self) -> dict[str, np.ndarray]:
        out = {}
        if self.gaze is not None:
            out["gaze"] = np.asarray([self.gaze], np.float32)
        if self.distance is not None:
            out["distance"] = np.asarray([self.distance], np.float32)
        if self.emotion is not None:
            out["emotion"] = np.asarray([self.emotion], np.int32)
        return out

    def scales(self) -> tuple[tuple[str, float], ...]:
        """Guidance scales of the conditions that are given (a dropped one cannot guide)."""
        given = {"audio"} | {c for c in ("gaze", "distance", "emotion")
                             if getattr(self, c) is not None}
        return tuple(sorted((c, float(s)) for c, s in dict(self.cfg).items()
                            if s and c in given))


@dataclasses.dataclass(frozen=True)
class Source:
    """The encoded portrait: crop (R, R, 3) uint8, V_app (1, D, H, W, C), z_id (1, id_dim)."""

    crop: np.ndarray
    v_app: jax.Array
    z_id: jax.Array


@dataclasses.dataclass(frozen=True)
class Generated:
    """frames (N, R, R, 3) uint8 (float32 in [-1, 1] with ``float_frames``), motion (N, M)
    [z_pose, z_dyn], audio (S,) 16 kHz mono; N = ceil(S / 640)."""

    frames: np.ndarray
    motion: np.ndarray
    audio: np.ndarray


# -- compiled programs -------------------------------------------------------------------------
# Progress of the running offline program: set by ``generate``, called from inside the scan.
_progress_hook: list[Callable[[int, int], None] | None] = [None]


def _report_progress(done, total) -> None:
    hook = _progress_hook[0]
    if hook is not None:
        hook(int(done), int(total))


def _decode(latent: FaceLatentModel, v_app, z_id, motion, decode_batch: int):
    """motion (W, 7 + dyn) -> frames (W, R, R, 3) in [-1, 1], ``decode_batch`` at a time."""
    def dec(m):
        n = m.shape[0]
        return latent.decode(jax.tree.map(lambda v: jnp.broadcast_to(v, (n,) + v.shape[1:]),
                                          v_app),
                             jnp.broadcast_to(z_id, (n,) + z_id.shape[1:]),
                             m[:, :POSE_DIM], m[:, POSE_DIM:])
    if not decode_batch or decode_batch >= motion.shape[0]:
        return dec(motion)
    return jax.lax.map(lambda m: dec(m[None])[0], motion, batch_size=decode_batch)


def _window(graphdefs, states, carry, audio_window, frames_ok, v_app, z_id, conditions, key,
            schedule, opts):
    motion_model = nnx.merge(graphdefs[0], states[0])
    latent = nnx.merge(graphdefs[1], states[1])
    steps, sampler, eta, scales, decode_batch, float_frames, stride = opts
    carry, motion = window_step(motion_model, carry, audio_window, frames_ok, conditions, key,
                                schedule, num_steps=steps, sampler=sampler, eta=eta,
                                cfg_scales=dict(scales), commit=stride)
    motion = motion[0, :stride]  # the committed frames (all W unless low-latency)
    frames = _decode(latent, v_app, z_id, motion, decode_batch)
    return carry, (motion, frames if float_frames else to_uint8(frames))


def _scan_windows(graphdefs, states, carry, audio_w, valid_w, v_app, z_id, conditions, key,
                  schedule, opts):
    """The window step scanned over (n_win, 1, W, A) features: -> carry, (motion (n_win, W, M),
    frames (n_win, W, R, R, 3)). Offline and streaming both run this scan (streaming with one
    window at a time), so XLA compiles the same loop body and the outputs agree bit for bit."""
    n_win = audio_w.shape[0]

    def body(carry, xs):
        carry, out = _window(graphdefs, states, carry, xs[0], xs[1], v_app, z_id, conditions,
                             key, schedule, opts)
        jax.debug.callback(_report_progress, carry.index, n_win, ordered=True)
        return carry, out

    return jax.lax.scan(body, carry, (audio_w, valid_w))


@functools.partial(jax.jit, static_argnames=("graphdefs", "opts"))
def _offline_program(graphdefs, states, audio_w, valid_w, v_app, z_id, conditions, key,
                     schedule, *, opts):
    """All windows in one program."""
    carry = init_carry(nnx.merge(graphdefs[0], states[0]), 1)
    return _scan_windows(graphdefs, states, carry, audio_w, valid_w, v_app, z_id, conditions,
                         key, schedule, opts)[1]


@functools.partial(jax.jit, static_argnames=("graphdefs", "opts"))
def _stream_program(graphdefs, states, carry, audio_window, frames_ok, v_app, z_id, conditions,
                    key, schedule, *, opts):
    """One window: carry, (1, W, A) features, (W,) validity -> carry, (motion (W, M), frames)."""
    carry, (motion, frames) = _scan_windows(graphdefs, states, carry, audio_window[None],
                                            frames_ok[None], v_app, z_id, conditions, key,
                                            schedule, opts)
    return carry, (motion[0], frames[0])


@functools.partial(jax.jit, static_argnames=("graphdef", "scales"))
def _denoise_program(graphdef, state, carry, audio_window, frames_ok, conditions, x_t, t, *,
                     scales):
    """One guided denoising call of a window (the body of its sampling loop): x_t (1, W, M),
    t (1,) -> predicted x0 (1, W, M); the CFG passes run as one batched model call."""
    model = nnx.merge(graphdef, state)
    cond, drop = window_conditions(model, carry, audio_window, frames_ok, conditions)
    return diffusion.guided_denoiser(model, dict(scales))(x_t, t, cond, drop)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _decode_program(graphdef, state, v_app, z_id, motion):
    """One decode batch (the body of a window's decode loop): motion (n, M) -> frames."""
    return _decode(nnx.merge(graphdef, state), v_app, z_id, motion, 0)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _encode_program(graphdef, state, image):
    latent = nnx.merge(graphdef, state)
    return latent.encode_appearance(to_unit(image))


# -- the pipeline ------------------------------------------------------------------------------
class TalkingFacePipeline:
    """Photo + speech -> talking-face frames with the two trained stages.

    Args:
      latent_model: stage 1 (``FaceLatentModel``), resolution R.
      motion_model: stage 2 (``MotionDiT``) trained on this stage 1's latents (motion width
        7 + dyn_dim).
      schedule: stage 2's training noise schedule.
      frontend: stage 2's audio frontend.
      framing: where the face sits in a training frame (crop geometry).
      max_seconds: the offline length limit (streaming has none).
      decode_batch: frames decoded at once inside a window (0: the whole window).
      defaults: default ``Controls`` (stage 2's ``sample`` settings).
    """

    def __init__(self, latent_model: FaceLatentModel, motion_model: MotionDiT, *,
                 schedule: diffusion.Schedule, frontend: AudioFrontend,
                 framing: Framing = SYNTHTALK_FRAMING, max_seconds: float = 300.0,
                 decode_batch: int = 0, defaults: Controls | None = None):
        if motion_model.motion_dim != POSE_DIM + latent_model.dyn_dim:
            raise ValueError(
                f"The motion model generates {motion_model.motion_dim}-d motion but stage 1 "
                f"decodes {POSE_DIM} + {latent_model.dyn_dim} = "
                f"{POSE_DIM + latent_model.dyn_dim}-d [z_pose, z_dyn]. Train stage 2 on this "
                f"stage-1 checkpoint's latents (`vasa-jax data build latents`, then "
                f"`vasa-jax train motion --variant synthtalk_latents`), not on ground-truth "
                f"motion.")
        if frontend.dim != motion_model.audio_dim:
            raise ValueError(f"The audio frontend gives {frontend.dim} features per frame but "
                             f"the motion model expects {motion_model.audio_dim}.")
        self.resolution = latent_model.resolution
        self.window, self.context = motion_model.window, motion_model.context
        self.schedule, self.frontend, self.framing = schedule, frontend, framing
        self.max_seconds, self.decode_batch = max_seconds, decode_batch
        self.defaults = defaults or Controls()
        g_motion, s_motion = nnx.split(motion_model)
        g_latent, s_latent = nnx.split(latent_model)
        self._graphdefs = (g_motion, g_latent)
        self._states = (s_motion, s_latent)

    @classmethod
    def from_checkpoints(cls, latent_ckpt: str, motion_ckpt: str, **kwargs
                         ) -> "TalkingFacePipeline":
        """Both stages from their training workdirs (local paths or gs://), EMA weights of the
        latest checkpoints; the frontend, schedule and default controls from stage 2's
        config."""
        from vasa_jax.models import restore_model
        from vasa_jax.motion.audio import frontend_from_config
        from vasa_jax.motion.diffusion import make_schedule

        stages = {}
        for workdir, want in ((latent_ckpt, "latent"), (motion_ckpt, "motion")):
            run = restore_model(workdir)
            if run.config.task != want:
                raise ValueError(f"{workdir} holds a {run.config.task!r} checkpoint, not a "
                                 f"{want!r} one; pass the stage-{1 if want == 'latent' else 2} "
                                 f"workdir there.")
            stages[want] = run
        mc = stages["motion"].config
        defaults = Controls(cfg=tuple(sorted(dict(mc.sample.cfg).items())),
                            steps=int(mc.sample.steps), sampler=str(mc.sample.sampler))
        kwargs.setdefault("defaults", defaults)
        return cls(stages["latent"].model, stages["motion"].model,
                   schedule=make_schedule(mc.diffusion.schedule, mc.diffusion.train_steps),
                   frontend=frontend_from_config(mc.audio), **kwargs)

    # -- inputs --------------------------------------------------------------------------------
    def prepare_source(self, image: np.ndarray | str | os.PathLike, *,
                       face_index: int | None = None, detect: bool = True) -> Source:
        """Photo (path or (H, W, 3) uint8) -> the encoded face. ``detect=False`` takes an image
        already in the training framing (it is only resized)."""
        import cv2

        from vasa_jax.media.image_io import load_image

        name = "the photo"
        if not isinstance(image, np.ndarray):
            name = repr(os.fspath(image))
            image = load_image(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise InputError(f"The photo must be (H, W, 3) uint8 RGB, got {image.shape} "
                             f"{image.dtype}.")
        r = self.resolution
        if detect:
            crop, _ = crop_face(image, r, face_index=face_index, framing=self.framing,
                                name=name)
        else:
            crop = image if image.shape[:2] == (r, r) else cv2.resize(
                image, (r, r), interpolation=cv2.INTER_AREA)
        v_app, z_id = _encode_program(self._graphdefs[1], self._states[1], crop[None])
        return Source(np.asarray(crop), v_app, z_id)

    def features(self, audio: np.ndarray) -> np.ndarray:
        """(S,) 16 kHz mono -> (ceil(S / 640), A) frontend features, computed window by window
        from each window's audio plus the frontend's context, exactly as streaming does."""
        n = -(-audio.shape[0] // SAMPLES_PER_FRAME)
        padded = np.pad(audio, (0, n * SAMPLES_PER_FRAME - audio.shape[0]))
        w = self.window
        return np.concatenate([features_for_frames(self.frontend, padded, s, s + w)
                               for s in range(0, n, w)])[:n]

    def _stride(self, stride: int | None) -> int:
        s = self.window if stride is None else int(stride)
        if not 1 <= s <= self.window:
            raise ValueError(f"stride must be 1..{self.window} (the window W) frames, got "
                             f"{stride}.")
        return s

    def _opts(self, c: Controls, float_frames: bool, stride: int | None = None):
        if c.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"Unknown sampler {c.sampler!r}; use 'ddim' or 'ddpm'.")
        if c.emotion is not None and not 0 <= c.emotion < len(EMOTIONS):
            raise ValueError(f"emotion must be 0..{len(EMOTIONS) - 1} ({', '.join(EMOTIONS)}).")
        return (int(c.steps), c.sampler, float(c.eta), c.scales(), int(self.decode_batch),
                bool(float_frames), self._stride(stride))

    def _abstract_inputs(self, controls: Controls, sharding) -> dict:
        """Shape-only stand-ins of a window's inputs, placed by ``sharding``."""
        motion_model = nnx.merge(self._graphdefs[0], self._states[0])
        r, w, m = self.resolution, self.window, motion_model.motion_dim
        v_app, z_id = jax.eval_shape(
            lambda state: nnx.merge(self._graphdefs[1], state).encode_appearance(
                jnp.zeros((1, r, r, 3), jnp.float32)), self._states[1])
        f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
        inputs = dict(states=self._states,
                      carry=jax.eval_shape(lambda: init_carry(motion_model, 1)),
                      audio_window=f32(1, w, motion_model.audio_dim),
                      frames_ok=jax.ShapeDtypeStruct((w,), jnp.bool_), v_app=v_app, z_id=z_id,
                      conditions=controls.conditions(),
                      key=jax.eval_shape(lambda: jax.random.PRNGKey(0)),
                      schedule=self.schedule, x_t=f32(1, w, m),
                      t=jax.ShapeDtypeStruct((1,), jnp.int32),
                      motion=f32(max(1, min(self.decode_batch or w, w)), m))
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                           sharding=sharding), inputs)

    def lower_window(self, controls: Controls | None = None, *, sharding=None):
        """One window of generation (the offline scan's body, as streaming runs it: W frames of
        motion sampled with every denoising step and CFG, then decoded) lowered for abstract
        inputs without running it; ``.compile()`` gives its memory and cost analyses
        (``vasa_jax.plan``: compiled for a TPU chip from models built with ``nnx.eval_shape``).
        ``sharding``: where every input lives (default: the default device)."""
        c = controls or self.defaults
        i = self._abstract_inputs(c, sharding)
        return _stream_program.lower(
            self._graphdefs, i["states"], i["carry"], i["audio_window"], i["frames_ok"],
            i["v_app"], i["z_id"], i["conditions"], i["key"], i["schedule"],
            opts=self._opts(c, False))

    def lower_window_parts(self, controls: Controls | None = None, *, sharding=None) -> dict:
        """The two loop bodies a window repeats, lowered on their own (XLA's cost analysis
        counts a loop body once, so a window's cost is built from these): ``denoise``, one
        guided MotionDiT call (run ``steps`` times per window) and ``decode``, one decode batch
        of ``decode_batch`` frames (the whole window when 0; run ceil(W / batch) times)."""
        c = controls or self.defaults
        i = self._abstract_inputs(c, sharding)
        return {"denoise": _denoise_program.lower(
                    self._graphdefs[0], i["states"][0], i["carry"], i["audio_window"],
                    i["frames_ok"], i["conditions"], i["x_t"], i["t"], scales=c.scales()),
                "decode": _decode_program.lower(self._graphdefs[1], i["states"][1], i["v_app"],
                                                i["z_id"], i["motion"])}

    # -- generation ----------------------------------------------------------------------------
    def generate(self, source: Source, audio: np.ndarray, controls: Controls | None = None, *,
                 progress: Callable[[int, int], None] | None = None,
                 float_frames: bool = False, stride: int | None = None) -> Generated:
        """Offline: the whole audio in one compiled scan. ``progress(done, total)`` is called
        after each window (from inside the program). ``stride``: what low-latency streaming
        with that stride gives (``stream``), computed offline (None: W, non-overlapping
        windows)."""
        c = controls or self.defaults
        opts = self._opts(c, float_frames, stride)
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise InputError(f"audio must be non-empty (S,) 16 kHz mono, got {audio.shape}.")
        check_offline_length(audio.size, self.max_seconds)
        feats = self.features(audio)
        n = feats.shape[0]
        audio_w, valid_w = split_windows(jnp.asarray(feats)[None], self.window, opts[-1])
        _progress_hook[0] = progress
        try:
            motion, frames = _offline_program(
                self._graphdefs, self._states, audio_w, valid_w, source.v_app, source.z_id,
                c.conditions(), jax.random.PRNGKey(c.seed), self.schedule, opts=opts)
            motion, frames = jax.device_get((motion, frames))
        finally:
            _progress_hook[0] = None
        return Generated(frames.reshape((-1,) + frames.shape[2:])[:n],
                         motion.reshape(-1, motion.shape[-1])[:n], audio)

    def stream(self, source: Source, audio_chunks: Iterable[np.ndarray],
               controls: Controls | None = None, *, float_frames: bool = False,
               stride: int | None = None) -> Iterator[np.ndarray]:
        """Streaming: ``audio_chunks`` (16 kHz mono float32 pieces of any sizes) in, frames out
        as soon as their audio and the frontend's look-ahead have arrived. No length limit; the
        same output as ``generate`` with the same seed and ``stride``.

        ``stride`` S (default W): each window yields its first S frames ((S, R, R, 3), the last
        one trimmed). S = W: windows do not overlap; S < W (low latency): a window is sampled
        as soon as S new frames of audio are in, with the unheard rest of it marked dropped
        (MotionDiT trains with trailing audio dropped), so the first frame waits for S + the
        look-ahead frames of audio instead of W + look-ahead, at W / S times the motion
        sampling per frame."""
        c = controls or self.defaults
        opts = self._opts(c, float_frames, stride)
        w, s, ctx = self.window, opts[-1], self.frontend.context_frames
        conditions, key = c.conditions(), jax.random.PRNGKey(c.seed)
        motion_model = nnx.merge(self._graphdefs[0], self._states[0])
        carry: WindowCarry = init_carry(motion_model, 1)
        buffer = np.zeros(0, np.float32)  # received audio not yet fully consumed
        offset = 0  # absolute frame index of buffer[0]
        start = 0  # first frame of the next window

        def run(valid: int):
            nonlocal carry
            feats = features_for_frames(self.frontend, buffer, start - offset,
                                        start + valid - offset)
            a = np.zeros((1, w, feats.shape[-1]), np.float32)
            a[0, :valid] = feats
            carry, (_, frames) = _stream_program(
                self._graphdefs, self._states, carry, jnp.asarray(a), jnp.arange(w) < valid,
                source.v_app, source.z_id, conditions, key, self.schedule, opts=opts)
            return np.asarray(frames[:valid])

        for chunk in audio_chunks:
            buffer = np.concatenate([buffer, np.asarray(chunk, np.float32).reshape(-1)])
            while (offset + buffer.size // SAMPLES_PER_FRAME) >= start + s + ctx:
                yield run(s)
                start += s
                drop = max(0, start - ctx - offset)  # keep the look-behind of the next window
                buffer, offset = buffer[drop * SAMPLES_PER_FRAME:], offset + drop
        total = offset + -(-buffer.size // SAMPLES_PER_FRAME)  # frames of the whole stream
        buffer = np.pad(buffer, (0, (total - offset) * SAMPLES_PER_FRAME - buffer.size))
        while start < total:
            yield run(min(s, total - start))
            start += s
