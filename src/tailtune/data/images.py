"""Reading image files as 8-bit RGB: the one place where a file becomes pixels.

Every path that opens an image (the datasets, the start-up check, the image store, ``predict``)
goes through :func:`open_image` / :func:`to_rgb`, so a file gives the same pixels everywhere and
``tailtune data check`` refuses exactly what training would. The rules, by PIL mode:

- ``RGB``, ``L``, ``1``, ``P``, ``YCbCr``, ``HSV``, ``RGBX``: PIL's own conversion (an 8-bit RGB or
  grey image is unchanged, bit for bit). ``CMYK``: PIL's formula, R = (255 - C)(255 - K) / 255,
  with no colour profile.
- Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``P`` or ``L`` / ``RGB`` with a transparent
  colour, a palette with alpha) is composited on **white**: each channel becomes
  ``round((c * a + 255 * (255 - a)) / 255)``. A fully opaque pixel keeps its colour; a transparent
  one is white, whatever colour the file stores under it (``convert("RGB")`` would keep that
  colour, often black).
- 16 bit (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 16-bit PNG, TIFF) keeps the high byte,
  ``v >> 8``, as PIL itself reads 16-bit colour PNGs (so ``v * 257`` gives ``v`` back exactly).
  ``I`` (32-bit integer; what PIL makes of 16-bit PGM files, scaled to the full range) is read the
  same way when every value lies in 0..65535, and refused otherwise.
- ``F`` (32-bit float): values all within 0..1 are scaled by 255, values within 0..255 are taken
  as they are (both rounded); anything else (negative, above 255, NaN) is refused, since its
  brightness scale cannot be known.
- Any other mode (``LAB``, ``La``, ``BGR;16``, ...) is refused by name.

Only the first frame of an animated or multi-page file is read, and an EXIF orientation tag is
not applied (as in the reference pipelines). A file with more than ``PIL.Image.MAX_IMAGE_PIXELS``
pixels (PIL's decompression-bomb guard, 89,478,485 by default) is refused with tailtune's message,
never PIL's warning.
"""

from __future__ import annotations

import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tailtune.errors import DataError

BACKGROUND = 255  # transparent pixels become white (the background product photos are shot on)
_PLAIN = ("RGB", "L", "1", "P", "YCbCr", "HSV", "RGBX", "CMYK")  # PIL converts these exactly
_ALPHA = ("RGBA", "LA", "PA", "RGBa")
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")
_FIX = "save it as an 8-bit RGB or grey image (PNG or JPEG)"
_open_lock = threading.Lock()  # catch_warnings is process-wide: one header parse at a time


class ImageFileError(DataError):
    """An image file that cannot be read as RGB: ``problem`` follows the path in the message;
    ``kind`` is "missing", "corrupt", "mode" (a mode or value range refused) or "size"."""

    def __init__(self, path, problem: str, fix: str, kind: str = "corrupt"):
        self.path, self.problem, self.fix, self.kind = str(path), problem, fix, kind
        super().__init__(f"image file {path} {problem}; {fix}.")


def has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` carries transparency in any of PIL's ways."""
    return (img.mode in _ALPHA or "transparency" in img.info
            or (img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"))


def _on_background(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:].astype(np.uint32)
    rgb = rgba[..., :3].astype(np.uint32)
    return ((rgb * a + BACKGROUND * (255 - a) + 127) // 255).astype(np.uint8)


def _grey(a8: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a8), "L").convert("RGB")


def _range(a: np.ndarray) -> tuple[float, float]:
    return (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)


def to_rgb(img: Image.Image, name: str | Path = "image") -> Image.Image:
    """``img`` as a new 8-bit RGB image, by the rules of this module's docstring.

    ``name`` (the file, or a description of an in-memory image) is named in the error
    (:class:`ImageFileError`) raised for a mode or value range that cannot be read.
    """
    mode = img.mode
    if mode in _SIXTEEN or mode == "I":
        a = np.asarray(img)
        lo, hi = _range(a)
        if lo < 0 or hi > 65535:
            raise ImageFileError(name, f"has PIL mode I (32-bit integers) with values from {lo:g} to {hi:g}, "
                                 "outside the 16-bit range 0..65535, so its brightness scale cannot be known",
                                 f"{_FIX}, or as 16-bit", "mode")
        a8 = (a.astype(np.int64) >> 8).astype(np.uint8)
        key = img.info.get("transparency")
        if isinstance(key, int):  # a 16-bit grey PNG's transparent value
            a8[a == key] = BACKGROUND
        return _grey(a8)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ImageFileError(name, "has PIL mode F (32-bit float) holding NaN or infinite values", _FIX, "mode")
        lo, hi = _range(a)
        if lo < 0 or hi > 255:
            raise ImageFileError(name, f"has PIL mode F (32-bit float) with values from {lo:g} to {hi:g}: neither "
                                 "0..1 nor 0..255, so its brightness scale cannot be known", _FIX, "mode")
        return _grey(np.floor(a * (255 if hi <= 1 else 1) + 0.5).astype(np.uint8))
    if has_alpha(img) and mode not in ("1", "YCbCr", "HSV", "CMYK", "RGBX"):
        if mode in ("La",):
            raise ImageFileError(name, "has PIL mode La (premultiplied grey and alpha), which PIL cannot convert",
                                 _FIX, "mode")
        return Image.fromarray(_on_background(np.asarray(img.convert("RGBA"))), "RGB")
    if mode in _PLAIN:
        return img.convert("RGB")
    raise ImageFileError(name, f"has PIL mode {mode}, which tailtune does not convert to RGB", _FIX, "mode")


def _bomb_limit() -> int | None:
    return Image.MAX_IMAGE_PIXELS


def _too_large(path, pixels: int, size: str = "") -> ImageFileError:
    return ImageFileError(path, f"is {size}{pixels:,} pixels, more than the {_bomb_limit():,} of PIL's "
                          "decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS)",
                          "resize it (the models see a few hundred pixels a side) or leave it out; from Python, "
                          "raising PIL.Image.MAX_IMAGE_PIXELS admits larger files", "size")


def _reason(e: Exception, path) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not a format PIL reads"
    return f"{type(e).__name__}: {str(e).replace(repr(str(path)), 'the file')}"


def open_file(path) -> Image.Image:
    """``path`` opened by PIL (header read, pixels not yet decoded), its size checked against the
    decompression-bomb limit; every failure is an :class:`ImageFileError` naming the file."""
    try:
        with _open_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said below, in our words
            img = Image.open(path)
    except FileNotFoundError:
        raise ImageFileError(path, "does not exist", "check the path, or remove it from the list", "missing") from None
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        if m is None:
            raise ImageFileError(path, f"is refused by PIL's decompression-bomb guard ({e})",
                                 "resize it or leave it out", "size") from None
        raise _too_large(path, int(m.group(1))) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL's ways of saying "corrupt"
        raise ImageFileError(path, f"is corrupt or not an image ({_reason(e, path)})",
                             "replace or remove it") from None
    w, h = img.size
    limit = _bomb_limit()
    if limit is not None and w * h > limit:
        img.close()
        raise _too_large(path, w * h, f"{w} x {h} = ")
    return img


def decode(img: Image.Image, path) -> Image.Image:
    """The pixels of an opened file (``open_file``) as RGB (``to_rgb``); a file that fails to
    decode is an :class:`ImageFileError` naming it."""
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:  # truncated or damaged data
        raise ImageFileError(path, f"is corrupt or not an image ({_reason(e, path)})", "replace or remove it") from None
    return to_rgb(img, path)


def open_image(path) -> Image.Image:
    """The image file ``path`` as a decoded 8-bit RGB image (see the module docstring for the rules)."""
    with open_file(path) as img:
        return decode(img, path)
