"""Decode, check, resize and re-encode downloaded bytes with img2dataset's `Resizer`.

img2dataset's resizer decodes with OpenCV, which has no decompression-bomb guard of the
size PIL has and happily decodes half a JPEG. So before handing bytes to it we read the
header with PIL (keeping `Image.MAX_IMAGE_PIXELS` in force) and check that JPEG and PNG
data is complete. Every refusal becomes a short reason for `image_rejected`.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from img2dataset.resizer import Resizer  # noqa: E402
from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: E402

from pipeline.fetch import FetchOptions  # noqa: E402

#: img2dataset's Resizer silences OpenCV by swapping the process's stdout/stderr file
#: descriptors; two threads doing that at once can leave stdout pointing at /dev/null
#: for good. One lock per process serialises it (img2dataset also resizes serially).
_RESIZE_LOCK = threading.Lock()

#: The Resizer's error strings, mapped to our reasons.
_RESIZER_REASONS = {
    "image too small": "too_small",
    "aspect ratio too large": "aspect_ratio",
    "image area too large": "decompression_bomb",
}


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


def probe(data: bytes) -> tuple[str | None, int, int, str | None]:
    """(format, width, height, reason) from the header alone, with PIL's bomb guard on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                image_format = img.format
    except Image.DecompressionBombError:
        return None, 0, 0, "decompression_bomb"
    except UnidentifiedImageError:
        return None, 0, 0, "not_an_image"
    except Exception as err:  # PIL raises many kinds on hostile headers
        return None, 0, 0, f"unreadable {type(err).__name__}"
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        return image_format, width, height, "decompression_bomb"
    return image_format, width, height, None


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


class ImageResizer:
    """Callable that turns downloaded bytes into a `ResizedImage`; safe to share."""

    def __init__(self, options: FetchOptions):
        self.options = options
        self.extension = options.encode_format
        max_area = float(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else float("inf")
        self._resizer = Resizer(
            image_size=options.image_size,
            resize_mode=options.resize_mode,
            resize_only_if_bigger=options.resize_only_if_bigger,
            encode_quality=options.encode_quality,
            encode_format=options.encode_format,
            min_image_size=options.min_image_size,
            max_image_area=max_area,
            max_aspect_ratio=options.max_aspect_ratio,
        )

    def __call__(self, data: bytes) -> ResizedImage:
        digest = hashlib.sha256(data).hexdigest()
        if not data:
            return ResizedImage(digest, reason="empty")
        image_format, _w, _h, reason = probe(data)
        if reason is None and looks_truncated(data, image_format):
            reason = "truncated"
        if reason:
            return ResizedImage(digest, reason=reason)
        if image_format == "JPEG" or image_format == "TIFF":
            data_for_resize = upright(data)
        else:
            data_for_resize = data
        with _RESIZE_LOCK:
            out, width, height, orig_w, orig_h, err = self._resizer(io.BytesIO(data_for_resize))
        if err is not None or out is None:
            text = str(err or "no output")
            return ResizedImage(digest, reason=_RESIZER_REASONS.get(text, f"decode {text}"))
        return ResizedImage(digest, out, width, height, orig_w, orig_h)
