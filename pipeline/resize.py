"""Decode, check, resize and re-encode downloaded bytes the way img2dataset's `Resizer` does.

The output matches img2dataset's `Resizer` byte for byte (same OpenCV decode, the same
size arithmetic as its albumentations transforms, the same interpolation, padding and
encoder), with three differences:

- **Thread-safe, no lock.** img2dataset's Resizer silences OpenCV by swapping the
  process's stdout/stderr file descriptors around every call, which two threads must not
  do at once; we call OpenCV directly, so all fetch threads of a worker resize in parallel
  (OpenCV releases the GIL while it decodes, resizes and encodes). The price: libjpeg's
  warnings about corrupt data reach the worker's stderr instead of being swallowed.
- **Reduced-size JPEG decode.** A JPEG at least `2 x DRAFT_MARGIN` times larger than the
  target (on the side the resize mode scales) is decoded at 1/2, 1/4 or 1/8 scale by
  libjpeg's DCT scaling (`cv2.IMREAD_REDUCED_*`, the same mechanism as PIL's `draft`),
  keeping at least `DRAFT_MARGIN` times the target size, then resized with the same
  INTER_AREA as the full path to the same output size. Against a full decode the result
  differs by PSNR >= 46 dB on the Debian wallpapers (`bench/bench_fetch.py --resize-only`,
  `tests/test_fetch.py`), and decoding costs 2-5x less for baseline JPEGs.
- **Safety checks first.** OpenCV has no decompression-bomb guard of the size PIL has and
  happily decodes half a JPEG, so before decoding we read the header with PIL (keeping
  `Image.MAX_IMAGE_PIXELS` in force) and check that JPEG and PNG data is complete. Every
  refusal becomes a short reason for `image_rejected`.

As before, a JPEG or TIFF whose EXIF orientation says it is turned is stored upright
(img2dataset stores such phone photos sideways).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: E402

from pipeline.fetch import FetchOptions  # noqa: E402

cv2.setNumThreads(1)  # as img2dataset: parallelism comes from threads and processes

#: The reduced decode keeps at least this many times the target size before resizing.
DRAFT_MARGIN = 2.0

#: The Resizer's error strings, mapped to our reasons.
_RESIZER_REASONS = {
    "image too small": "too_small",
    "aspect ratio too large": "aspect_ratio",
    "image area too large": "decompression_bomb",
}
_MODES = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")
_ENCODE = {
    "jpg": int(cv2.IMWRITE_JPEG_QUALITY),
    "png": int(cv2.IMWRITE_PNG_COMPRESSION),
    "webp": int(cv2.IMWRITE_WEBP_QUALITY),
}
_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip
_REDUCED_GRAY = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}  # fmt: skip
#: EXIF orientations that swap width and height.
_TRANSPOSED = frozenset({5, 6, 7, 8})


class _Rejected(Exception):
    """The Resizer's own refusal, with its message."""


@dataclass(frozen=True)
class ResizedImage:
    """The re-encoded image and its sizes, or `reason` why it was rejected."""

    sha256: str
    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def looks_truncated(data: bytes, image_format: str | None) -> bool:
    """True when JPEG or PNG data ends before its end marker.

    In JPEG entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so the
    last EOI (FFD9) must come after the last start-of-scan (FFDA) in a complete file; an
    embedded EXIF thumbnail has both before the main scan and does not fool the test.
    """
    if image_format == "JPEG":
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if image_format == "PNG":
        return data.rfind(b"IEND") < 0
    return False


@dataclass(frozen=True)
class _Header:
    format: str | None
    width: int
    height: int
    mode: str | None = None
    orientation: int = 1
    reason: str | None = None


def _inspect(data: bytes) -> _Header:
    """The header alone, with PIL's bomb guard on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                image_format, mode = img.format, img.mode
                orientation = 1
                if image_format in ("JPEG", "TIFF", "MPO"):
                    try:
                        orientation = int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
                    except Exception:  # a damaged EXIF block: keep the pixels as they are
                        orientation = 1
    except Image.DecompressionBombError:
        return _Header(None, 0, 0, reason="decompression_bomb")
    except UnidentifiedImageError:
        return _Header(None, 0, 0, reason="not_an_image")
    except Exception as err:  # PIL raises many kinds on hostile headers
        return _Header(None, 0, 0, reason=f"unreadable {type(err).__name__}")
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        return _Header(image_format, width, height, mode, orientation, "decompression_bomb")
    return _Header(image_format, width, height, mode, orientation)


def probe(data: bytes) -> tuple[str | None, int, int, str | None]:
    """(format, width, height, reason) from the header alone, with PIL's bomb guard on."""
    header = _inspect(data)
    return header.format, header.width, header.height, header.reason


_ORIENTATION_TAG = 0x0112


def upright(data: bytes) -> bytes:
    """The bytes with EXIF rotation applied, for the few photos that need it.

    OpenCV's `IMREAD_UNCHANGED`, which the Resizer uses, ignores EXIF orientation, so a
    phone photo would be stored sideways. Rotated images are transposed with PIL and
    handed on as lossless PNG; every other image passes through untouched.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.getexif().get(_ORIENTATION_TAG, 1) in (None, 1):
                return data
            turned = ImageOps.exif_transpose(img)
            buf = io.BytesIO()
            turned.save(buf, format="PNG")
            return buf.getvalue()
    except Exception:  # a damaged EXIF block: keep the pixels as they are
        return data


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit images of one shape, in dB (inf if equal)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


class ImageResizer:
    """Callable that turns downloaded bytes into a `ResizedImage`; safe to share by threads.

    `reduced_decode=False` always decodes at full size (the reference for the quality check).
    """

    def __init__(self, options: FetchOptions, reduced_decode: bool = True):
        if options.resize_mode not in _MODES:
            raise ValueError(f"Invalid option for resize_mode: {options.resize_mode}")
        if options.encode_format not in _ENCODE:
            raise ValueError(f"Invalid encode format {options.encode_format}")
        if options.encode_format == "png" and not 0 <= options.encode_quality <= 9:
            raise ValueError("For png, encode quality is a compression level from 0 to 9")
        self.options = options
        self.extension = options.encode_format
        self.size = options.image_size
        self.mode = options.resize_mode
        self.reduced_decode = reduced_decode
        self.max_area = float(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else float("inf")
        self._encode_params = [_ENCODE[options.encode_format], options.encode_quality]

    def __call__(self, data: bytes) -> ResizedImage:
        digest = hashlib.sha256(data).hexdigest()
        if not data:
            return ResizedImage(digest, reason="empty")
        header = _inspect(data)
        reason = header.reason
        if reason is None and looks_truncated(data, header.format):
            reason = "truncated"
        if reason:
            return ResizedImage(digest, reason=reason)
        try:
            out, width, height, orig_w, orig_h = self._resize(data, header)
        except _Rejected as rejected:
            text = str(rejected)
            return ResizedImage(digest, reason=_RESIZER_REASONS.get(text, f"decode {text}"))
        except Exception as err:  # as the Resizer: any OpenCV failure rejects the image
            return ResizedImage(digest, reason=f"decode {err}")
        return ResizedImage(digest, out, width, height, orig_w, orig_h)

    # -- the steps of img2dataset's Resizer.__call__, without its stdout/stderr swap -----

    def _resize(self, data: bytes, header: _Header):
        opts = self.options
        scale = self._reduction(header)
        if scale > 1:
            img = self._decode_reduced(data, header, scale)
            if header.orientation in _TRANSPOSED:
                original_height, original_width = header.width, header.height
            else:
                original_height, original_width = header.height, header.width
        else:
            if header.format in ("JPEG", "TIFF", "MPO") and header.orientation != 1:
                data = upright(data)
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise _Rejected("Image decoding error")
            if img.ndim == 3 and img.shape[-1] == 4:  # alpha matting on white, as img2dataset
                alpha = img[:, :, 3, np.newaxis]
                img = alpha / 255 * img[..., :3] + 255 - alpha
                img = np.rint(img.clip(min=0, max=255)).astype(np.uint8)
            original_height, original_width = img.shape[:2]
        if min(original_height, original_width) < opts.min_image_size:
            raise _Rejected("image too small")
        if original_height * original_width > self.max_area:
            raise _Rejected("image area too large")
        if (
            max(original_height, original_width) / min(original_height, original_width)
            > opts.max_aspect_ratio
        ):
            raise _Rejected("aspect ratio too large")
        img = self._scale_crop_pad(img, original_width, original_height)
        height, width = img.shape[:2]
        ok, encoded = cv2.imencode(f".{self.extension}", img, params=self._encode_params)
        if not ok:
            raise _Rejected("encoding error")
        return encoded.tobytes(), width, height, original_width, original_height

    def _downscale(self, width: int, height: int) -> bool | None:
        """Whether the mode shrinks an image of this size; None when it does not resize."""
        if self.mode in ("keep_ratio", "center_crop"):
            downscale = min(width, height) > self.size
        elif self.mode in ("border", "keep_ratio_largest"):
            downscale = max(width, height) > self.size
        else:
            return None
        if self.options.resize_only_if_bigger and not downscale:
            return None
        return downscale

    def _target(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after albumentations' SmallestMaxSize / LongestMaxSize."""
        side = (
            min(width, height) if self.mode in ("keep_ratio", "center_crop") else max(width, height)
        )
        scale = self.size / side
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _reduction(self, header: _Header) -> int:
        """1, 2, 4 or 8: how much smaller to decode this image."""
        if not self.reduced_decode or header.format not in ("JPEG", "MPO"):
            return 1
        if header.mode not in ("RGB", "L", "CMYK", "YCbCr"):
            return 1
        if not self._downscale(header.width, header.height):
            return 1
        short = min(header.width, header.height)
        side = (
            short
            if self.mode in ("keep_ratio", "center_crop")
            else max(header.width, header.height)
        )
        for scale in (8, 4, 2):
            if -(-side // scale) >= self.size * DRAFT_MARGIN and -(-short // scale) >= 1:
                return scale
        return 1

    def _decode_reduced(self, data: bytes, header: _Header, scale: int) -> np.ndarray:
        """DCT-scaled decode; OpenCV applies the EXIF orientation in these modes."""
        flags = (_REDUCED_GRAY if header.mode == "L" else _REDUCED_COLOR)[scale]
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if img is None:
            raise _Rejected("Image decoding error")
        return img

    def _scale_crop_pad(self, img: np.ndarray, original_width: int, original_height: int):
        downscale = self._downscale(original_width, original_height)
        if downscale is None:
            return img
        interpolation = cv2.INTER_AREA if downscale else cv2.INTER_LANCZOS4
        target = self._target(original_width, original_height)
        if target != img.shape[:2]:
            img = cv2.resize(img, (target[1], target[0]), interpolation=interpolation)
        height, width = img.shape[:2]
        if self.mode == "center_crop":
            top, left = (height - self.size) // 2, (width - self.size) // 2
            if top < 0 or left < 0:
                raise _Rejected("center crop larger than the image")
            img = img[top : top + self.size, left : left + self.size]
        elif self.mode == "border" and (height < self.size or width < self.size):
            top = int(max(self.size - height, 0) / 2.0)
            left = int(max(self.size - width, 0) / 2.0)
            bottom = max(self.size - height, 0) - top
            right = max(self.size - width, 0) - left
            img = cv2.copyMakeBorder(
                img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=[255, 255, 255]
            )
        return img
