"""Reading portrait photos: any file Pillow opens -> (H, W, 3) uint8 RGB, or a clear error."""

from __future__ import annotations

import os

import numpy as np

from vasa_jax.media.errors import InputError

# Modes converted to RGB without loss of meaning (alpha is composited over white).
_CONVERTIBLE = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1", "La", "RGBa"}


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo (JPEG, PNG, WebP, BMP, TIFF, ...; EXIF rotation applied) as (H, W, 3) uint8.

    Raises InputError naming the cause: missing file, not an image or corrupt, or a mode that
    has no faithful RGB meaning (16-bit/float single-channel, e.g. depth maps)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"Image {path!r} does not exist; pass the path of a portrait photo.")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except UnidentifiedImageError:
        raise InputError(f"{path!r} is not an image Pillow can read (JPEG, PNG, WebP, BMP, "
                         f"TIFF, ...); pass a photo file.") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"Image {path!r} is corrupt or truncated ({e}); re-export or "
                         f"re-download it.") from None
    if im.mode not in _CONVERTIBLE:
        raise InputError(f"Image {path!r} has mode {im.mode!r} (e.g. 16-bit or float data), "
                         f"which is not a colour photo; convert it to 8-bit RGB first.")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency"
                                                         in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
