"""Reading portrait photos: any file Pillow opens -> (H, W, 3) uint8 RGB, or a clear error.

The pixel count is checked from the file's header before anything is decoded: photos over
``MAX_MEGAPIXELS`` are refused with a request to downscale (Pillow's own guard would only warn
from 89 MP and raise an uncaught DecompressionBombError from 179 MP).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from vasa_jax.media.errors import InputError

# A portrait needs a face of a few hundred pixels; 50 MP covers full-resolution photos of most
# phone and camera sensors, and decodes in ~150 MB.
MAX_MEGAPIXELS = 50

# Modes converted to RGB without loss of meaning (alpha is composited over white).
_CONVERTIBLE = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1", "La", "RGBa"}


def _too_large(path: str, what: str) -> InputError:
    return InputError(f"Image {path!r} is {what}, over the limit of {MAX_MEGAPIXELS} megapixels; "
                      f"downscale it (e.g. to 4000 px on the long side: the face needs far "
                      f"fewer pixels).")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo (JPEG, PNG, WebP, BMP, TIFF, ...; EXIF rotation applied) as (H, W, 3) uint8.

    Raises InputError naming the cause: missing file, not an image or corrupt, over
    ``MAX_MEGAPIXELS`` (from the header, before decoding), or a mode that has no faithful RGB
    meaning (16-bit/float single-channel, e.g. depth maps)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"Image {path!r} does not exist; pass the path of a portrait photo.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
                if w * h > MAX_MEGAPIXELS * 1e6:
                    raise _too_large(path, f"{w}x{h} ({w * h / 1e6:.0f} MP)")
                im.load()
                im = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError:
        raise _too_large(path, f"over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP") from None
    except UnidentifiedImageError:
        raise InputError(f"{path!r} is not an image Pillow can read (JPEG, PNG, WebP, BMP, "
                         f"TIFF, ...); pass a photo file.") from None
    except InputError:
        raise
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
