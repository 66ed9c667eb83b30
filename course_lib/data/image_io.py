"""Reading and writing images, label masks and JSON -- the only place that touches pixels on disk.

Every reader names the file in its error; every writer writes a temporary file next to the
destination and ``os.replace``\\ s it into place, so nothing is ever left half-written.

PNG and JPEG files are written with fixed settings and no metadata (no timestamps), so the
same pixels always give the same bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_write_bytes

__all__ = [
    "read_rgb",
    "read_label_png",
    "write_png",
    "write_jpeg",
    "write_json",
    "read_json",
    "atomic_write_bytes",
]

# 16-bit and 32-bit integer modes that PIL uses for single-channel images with more than 8 bits.
_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as a ``uint8`` array of shape ``[H, W, 3]`` (RGB).

    Images that are not 8-bit RGB are converted, always the same way:

    * ``L`` (grey) and ``1`` (bi-level): the grey value is repeated in R, G and B.
    * ``LA`` / ``RGBA`` / ``PA``: the alpha channel is **dropped** (not composited onto a colour).
    * ``P`` (palette): each index is looked up in the palette.
    * ``I;16`` (16-bit grey, e.g. a 16-bit PNG) and ``I`` (32-bit integer grey holding 16-bit
      values): scaled linearly to 8 bits, ``round(v * 255 / 65535)``, so 0 -> 0 and 65535 -> 255;
      a 32-bit value outside ``0..65535`` is an error.
    * ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion to RGB.
    * ``F`` (32-bit float): an error -- there is no agreed range to scale from.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "RGB":
                arr = np.array(im, dtype=np.uint8)
            elif mode in _WIDE_INT_MODES:
                wide = np.asarray(im).astype(np.int64)
                if wide.size and (wide.min() < 0 or wide.max() > 65535):
                    raise ValueError(
                        f"{path}: {mode} image with values in [{wide.min()}, {wide.max()}], outside the "
                        "16-bit range 0..65535 that this reader scales to 8 bits; convert it to 8-bit RGB first"
                    )
                grey = np.rint(wide * (255.0 / 65535.0)).astype(np.uint8)
                arr = np.repeat(grey[:, :, None], 3, axis=2)
            elif mode == "F":
                raise ValueError(
                    f"{path}: 32-bit float image (mode F) has no agreed range to scale to 8 bits; "
                    "save it as 8-bit RGB (or 16-bit grey) first"
                )
            else:  # L, 1, LA, P, PA, RGBA, CMYK, YCbCr, LAB, HSV, RGBX, ...
                arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file not found: {path}") from None
    except (OSError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise OSError(f"Cannot read image {path}: {exc}") from exc
    return arr  # a writable copy, C-contiguous


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A label image (class ids or instance ids) as an ``int64`` array ``[H, W]``.

    Label images store *indices*, not colours: ``L`` and ``P`` (palette, as PASCAL VOC's
    ``SegmentationClass``) give their raw 8-bit indices -- the palette is ignored -- and
    ``I;16`` / ``I`` give their integer values. Any other mode (e.g. an RGB rendering of a
    mask) is an error, because colours cannot be turned back into ids without the palette.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P") + _WIDE_INT_MODES:
                raise ValueError(
                    f"{path}: label image has mode {im.mode!r}; expected one channel of ids "
                    "(mode L or P for class ids, L/I;16 for instance ids), not a colour rendering"
                )
            arr = np.asarray(im).astype(np.int64)  # astype copies: writable
    except FileNotFoundError:
        raise FileNotFoundError(f"Label image not found: {path}") from None
    except (OSError, SyntaxError) as exc:
        raise OSError(f"Cannot read label image {path}: {exc}") from exc
    return arr


def _encode(image: Image.Image, **save_kwargs) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, **save_kwargs)
    return buf.getvalue()


def write_png(path: str | os.PathLike, array: np.ndarray, palette: list[int] | None = None) -> None:
    """Write a ``uint8`` ``[H, W, 3]`` RGB array, or a ``[H, W]`` label array, as PNG.

    A label array is written as mode ``P`` when ``palette`` (flat ``[r, g, b, r, g, b, ...]``)
    is given -- viewers then show colours while readers get the ids -- else as mode ``L``.
    Fixed zlib level, no metadata: the same array gives the same bytes.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_png({path}): expected a uint8 array, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        image = Image.fromarray(np.ascontiguousarray(array))  # uint8 [H, W, 3] -> mode RGB
    elif array.ndim == 2 and palette is None:
        image = Image.fromarray(np.ascontiguousarray(array))  # uint8 [H, W] -> mode L
    elif array.ndim == 2:
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
        image.putpalette(list(palette) + [0] * (768 - len(palette)))
    else:
        raise ValueError(f"write_png({path}): expected [H, W, 3] or [H, W], got shape {array.shape}")
    atomic_write_bytes(path, _encode(image, format="PNG", compress_level=6, optimize=False))


def write_jpeg(path: str | os.PathLike, array: np.ndarray, quality: int = 92) -> None:
    """Write a ``uint8`` ``[H, W, 3]`` array as baseline JPEG, 4:4:4 (no chroma subsampling, so
    the colours of a 10-pixel sign survive), no metadata."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"write_jpeg({path}): expected uint8 [H, W, 3], got {array.dtype} {array.shape}")
    image = Image.fromarray(np.ascontiguousarray(array))
    atomic_write_bytes(path, _encode(image, format="JPEG", quality=quality, subsampling=0, optimize=False))


def write_json(path: str | os.PathLike, obj, indent: int | None = None) -> None:
    """Write ``obj`` as JSON with sorted keys (stable bytes), atomically."""
    text = json.dumps(obj, sort_keys=True, indent=indent, separators=(",", ":") if indent is None else None)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """Parse a JSON file; a missing or invalid file is an error that names it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON ({exc}); re-create or re-download it") from exc
