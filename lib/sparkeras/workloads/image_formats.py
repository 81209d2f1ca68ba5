"""Byte-level codecs for the real image formats, and conversion to fixed-size tensors.

Pure Python/numpy (plus Pillow for JPEG/PNG), no Spark: every function here takes bytes or
arrays and is testable alone. Spark calls them inside ``mapInPandas``/pandas UDFs.

Formats:
- IDX (MNIST, Fashion-MNIST): big-endian header ``00 00 <type> <ndim>`` then ``ndim``
  uint32 sizes, then the data. Images are ``0x00000803`` (uint8, 3 dims: count, rows,
  cols), labels ``0x00000801`` (uint8, 1 dim). Files may be gzipped.
- CIFAR-10 binary: records of 1 label byte + 3072 pixel bytes: 1024 red, 1024 green,
  1024 blue, each a 32x32 plane in row-major order. ``batches.meta.txt`` holds the class
  names, one per line.
- Encoded images (JPEG, PNG and whatever else Pillow decodes): any size and mode.

Tensors are ``uint8[height, width, channels]`` in HWC order with 1 (grayscale) or 3 (RGB)
channels; see :func:`to_tensor` for the conversion rules.
"""
from __future__ import annotations

import gzip
import io
import struct
import zlib
from typing import Optional

import numpy as np

IDX_UBYTE = 0x08
IDX_IMAGES_DIMS = 3
IDX_LABELS_DIMS = 1
CIFAR_SIDE = 32
CIFAR_PIXELS = CIFAR_SIDE * CIFAR_SIDE * 3
CIFAR_RECORD = 1 + CIFAR_PIXELS


class FormatError(ValueError):
    """A whole file cannot be read in its declared format (the reason is the message)."""


class ImageError(ValueError):
    """One image cannot be turned into a tensor (the reason is the message)."""


# ---------------------------------------------------------------------------------- IDX
def maybe_gunzip(data: bytes) -> bytes:
    """Decompress gzip data (recognised by its magic bytes); other data is returned as is."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise FormatError(f"corrupt gzip data: {exc}") from None


def parse_idx(data: bytes, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions (gzipped or raw)."""
    data = maybe_gunzip(data)
    if len(data) < 4:
        raise FormatError(f"not an IDX file: {len(data)} bytes, shorter than the header")
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise FormatError(f"not an IDX file: magic number 0x{data[:4].hex()} does not start "
                          f"with two zero bytes")
    if dtype != IDX_UBYTE:
        raise FormatError(f"unsupported IDX data type 0x{dtype:02x} (only unsigned byte "
                          f"0x08 is used by MNIST-style files)")
    if dims != ndim:
        kind = "images" if ndim == IDX_IMAGES_DIMS else "labels"
        raise FormatError(f"IDX magic 0x{data[:4].hex()} has {dims} dimensions; {kind} "
                          f"files have {ndim} (0x0000080{ndim})")
    header = 4 + 4 * dims
    if len(data) < header:
        raise FormatError(f"truncated IDX header: {len(data)} bytes")
    shape = struct.unpack(f">{dims}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header
    if actual != expected:
        raise FormatError(f"IDX header declares shape {list(shape)} ({expected} data bytes) "
                          f"but the file holds {actual} data bytes"
                          + (" (truncated)" if actual < expected else " (trailing bytes)"))
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray, compress: bool = True) -> bytes:
    """The IDX bytes of a uint8 array (optionally gzipped), as MNIST ships them."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.tobytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


# -------------------------------------------------------------------------------- CIFAR
def parse_cifar(data: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse a CIFAR-10 binary batch: (labels uint8[n], images uint8[n, 32, 32, 3] HWC,
    number of trailing bytes that do not make a whole record)."""
    n, rest = divmod(len(data), CIFAR_RECORD)
    records = np.frombuffer(data, dtype=np.uint8, count=n * CIFAR_RECORD).reshape(n, CIFAR_RECORD)
    labels = records[:, 0]
    images = records[:, 1:].reshape(n, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return labels, np.ascontiguousarray(images), rest


def encode_cifar(labels: np.ndarray, images: np.ndarray) -> bytes:
    """CIFAR-10 binary records from labels[n] and HWC images[n, 32, 32, 3]."""
    images = np.asarray(images, dtype=np.uint8)
    if images.shape[1:] != (CIFAR_SIDE, CIFAR_SIDE, 3):
        raise ValueError(f"CIFAR images must be 32x32x3, got {images.shape[1:]}")
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), CIFAR_PIXELS)
    return np.concatenate([np.asarray(labels, np.uint8)[:, None], planes], axis=1).tobytes()


def parse_cifar_meta(text: str) -> list[str]:
    """Class names from ``batches.meta.txt``: one per line, blank lines ignored."""
    return [line.strip() for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------ tensors
def _from_pil(img, height: int, width: int, channels: int) -> np.ndarray:
    from PIL import Image
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        # Transparent pixels become white, as an image viewer shows them on a white page.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(height, width, channels)


def decode_image(payload: Optional[bytes], height: int, width: int,
                 channels: int) -> tuple[np.ndarray, int, int]:
    """Decode an encoded image to ``uint8[height, width, channels]``; also return its
    original (height, width). Raises :class:`ImageError` with the reason.

    EXIF orientation is applied; transparency is composited on white; the image is
    resized (bilinear, aspect ratio not kept, as Keras' ``image_dataset_from_directory``)
    and converted to grayscale (ITU-R 601 luma) or RGB.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    if payload is None or len(payload) == 0:
        raise ImageError("empty file")
    try:
        img = Image.open(io.BytesIO(payload))
        original = (img.height, img.width)
        if img.format == "JPEG":
            # Let libjpeg decode at a reduced scale when the target is much smaller.
            img.draft("L" if channels == 1 else "RGB", (width, height))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _from_pil(img, height, width, channels), original[0], original[1]
    except UnidentifiedImageError:
        raise ImageError("not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageError(f"corrupt image: {exc}") from None


def raw_to_tensor(payload: Optional[bytes], src: tuple[int, int, int], height: int, width: int,
                  channels: int) -> np.ndarray:
    """A raw HWC uint8 image of shape ``src`` as ``uint8[height, width, channels]``."""
    if payload is None:
        raise ImageError("no image data")
    h, w, c = src
    if c not in (1, 3) or h < 1 or w < 1:
        raise ImageError(f"unsupported raw image shape {h}x{w}x{c}")
    if len(payload) != h * w * c:
        raise ImageError(f"raw image of {h}x{w}x{c} needs {h * w * c} bytes, got {len(payload)}")
    array = np.frombuffer(payload, dtype=np.uint8).reshape(h, w, c)
    if (h, w, c) == (height, width, channels):
        return array
    from PIL import Image
    img = Image.fromarray(array[:, :, 0] if c == 1 else array, "L" if c == 1 else "RGB")
    return _from_pil(img, height, width, channels)


def to_tensor(payload: Optional[bytes], src: Optional[tuple[int, int, int]], height: int,
              width: int, channels: int) -> tuple[np.ndarray, int, int]:
    """Raw (``src`` given) or encoded (``src`` None) image -> (tensor, original h, w)."""
    if src is not None:
        return raw_to_tensor(payload, src, height, width, channels), src[0], src[1]
    return decode_image(payload, height, width, channels)


def stack_raw(values, shape: tuple[int, int, int]) -> np.ndarray:
    """Equal-length raw images (a sequence of bytes) as one ``uint8[n, h, w, c]`` array."""
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, *shape)
