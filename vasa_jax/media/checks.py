"""Up-front checks of what a user passes to ``vasa-jax generate`` and ``vasa-jax eval
generate-set``. They run before any model is loaded and before speech is decoded, so a mistake
fails within seconds, with an ``InputError`` naming the cause and the fix, and nothing is written.

- ``check_output_file`` / ``check_output_dir`` / ``refuse_existing``: where results go (an .mp4
  name; a folder that exists or can be created, and is writable; no existing file replaced
  unless the user said ``--overwrite``);
- ``check_size``, ``check_positive``: numeric options;
- ``check_runs``: the two training workdirs (they exist, hold a checkpoint of the right stage,
  and fit together), judged from their stored configs without reading any weights;
- ``check_photo``: the photo (``image_io.load_image``: the pixel count from the header before
  decoding) and its face (``face_crop.crop_face`` at the model's resolution).

Speech is checked by ``audio.load_speech`` / ``audio.check_speech`` (the duration from the
container's header before decoding).
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from vasa_jax.media.errors import InputError

MIN_SIZE = 32  # the watermark's smallest frame side (safety.watermark.MIN_EMBED_SIDE)
MAX_SIZE = 4096  # output side; the frames of a window are held at this size
MAX_SECONDS = 300.0  # offline generation's default length limit (streaming has none)


def check_size(size: int | None, flag: str = "--size") -> None:
    """The output side: None (the default) or an even number of pixels in [32, 4096]."""
    if size is not None and (not MIN_SIZE <= size <= MAX_SIZE or size % 2):
        raise InputError(f"{flag} {size}: the output side must be an even number of pixels "
                         f"from {MIN_SIZE} to {MAX_SIZE} (H.264 needs even sides, the watermark "
                         f"at least {MIN_SIZE} px), e.g. {flag} 256.")


def check_positive(value: float | None, flag: str) -> None:
    """A count or a limit that must be > 0 (None: not given)."""
    if value is not None and not value > 0:
        raise InputError(f"{flag} {value}: must be greater than 0.")


def _check_folder(folder: str, flag: str) -> None:
    """``folder`` is a writable folder, or can be created: its nearest existing ancestor is a
    writable folder (nothing is created here)."""
    existing = folder
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{flag}: cannot write into {folder!r}: {existing!r} is a file, not a "
                         f"folder. Choose another location.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag}: the folder {existing!r} is not writable by this user; choose "
                         f"a writable location or change the folder's permissions.")


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False,
                      flag: str = "--out") -> str:
    """An output video path: ends in .mp4, is not a folder, its folder is writable (or can be
    created), and it does not exist yet unless ``overwrite``. Returns the path."""
    path = os.fspath(path)
    if not path.lower().endswith(".mp4"):
        raise InputError(f"{flag} {path!r}: the output is an mp4 file; end the name in .mp4.")
    if os.path.isdir(path):
        raise InputError(f"{flag} {path!r} is a folder; give a file name ending in .mp4.")
    _check_folder(os.path.dirname(os.path.abspath(path)), flag)
    if os.path.lexists(path) and not overwrite:
        raise InputError(f"{flag} {path!r} already exists; pass --overwrite to replace it, or "
                         f"choose another name.")
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> str:
    """An output folder: a writable folder, or one that can be created. Returns the path."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path!r} is a file; give a folder for the clips.")
    _check_folder(os.path.abspath(path), flag)
    return path


def refuse_existing(paths: Iterable[str], flag: str = "--out") -> None:
    """InputError if any of ``paths`` (files a command would write) exists already."""
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        raise InputError(f"{flag}: {len(existing)} of the files to write exist already (e.g. "
                         f"{existing[0]!r}); pass --overwrite to replace them, or choose an "
                         f"empty folder.")


def _read_run(workdir: str, task: str, flag: str):
    """The stored config of the latest checkpoint of a ``task`` run (no weights are read)."""
    import ml_collections

    from vasa_jax.checkpoint import read_config

    train = f"`vasa-jax train {task} --workdir DIR`"
    if "://" not in workdir:  # local: say plainly what is wrong with the path
        if not os.path.exists(workdir):
            raise InputError(f"{flag} {workdir!r} does not exist; pass the folder of a trained "
                             f"run ({train}).")
        if not os.path.isdir(workdir):
            raise InputError(f"{flag} {workdir!r} is a file; pass the folder of a trained run "
                             f"({train}).")
    try:
        _, config = read_config(os.path.join(workdir, "checkpoints"))
    except FileNotFoundError:
        raise InputError(f"{flag} {workdir!r} holds no checkpoint (nothing in "
                         f"{os.path.join(workdir, 'checkpoints')}); pass a trained run, or train "
                         f"one: {train}.") from None
    config = ml_collections.ConfigDict(config)
    if config.get("task") != task:
        other = config.get("task")
        hint = f" (pass it as --{other}-workdir)" if other in ("latent", "motion") else ""
        raise InputError(f"{flag} {workdir!r} holds a {other!r} run{hint}; {flag} needs a "
                         f"{task!r} run ({train}).")
    return config


def check_runs(latent_workdir: str, motion_workdir: str):
    """(stage-1 config, stage-2 config) of ``--latent-workdir`` / ``--motion-workdir``: both
    hold a checkpoint of their stage, and stage 2 generates the motion that stage 1 decodes."""
    from vasa_jax.latent.warp import POSE_DIM

    latent = _read_run(latent_workdir, "latent", "--latent-workdir")
    motion = _read_run(motion_workdir, "motion", "--motion-workdir")
    want = POSE_DIM + int(latent.model.dyn_dim)
    if int(motion.model.motion_dim) != want:
        raise InputError(f"--motion-workdir {motion_workdir!r} generates "
                         f"{motion.model.motion_dim}-d motion but the stage 1 of "
                         f"--latent-workdir decodes {want}-d [z_pose, z_dyn]; pass the stage-2 "
                         f"run trained on this stage 1's latents (`vasa-jax data build latents`, "
                         f"then `vasa-jax train motion --variant synthtalk_latents`).")
    return latent, motion


def check_photo(path: str | os.PathLike, resolution: int, *, face_index: int | None = None,
                detect: bool = True) -> np.ndarray:
    """The photo, read (``load_image``: size from the header first; EXIF rotation applied) and,
    with ``detect``, its face found and cropped to the training framing at ``resolution``:
    (R, R, 3) uint8 (the whole photo without ``detect``). InputError for an unreadable photo,
    no face, several faces without ``face_index``, or a face too small."""
    from vasa_jax.media.face_crop import crop_face
    from vasa_jax.media.image_io import load_image

    if face_index is not None and face_index < 0:
        raise InputError(f"--face-index {face_index}: faces are numbered from 0 (the "
                         f"leftmost).")
    image = load_image(path)
    if not detect:
        return image
    crop, _ = crop_face(image, resolution, face_index=face_index, name=repr(os.fspath(path)))
    return crop
