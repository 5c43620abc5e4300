"""Resizing: byte-identical to img2dataset's Resizer without its lock, reduced-size JPEG
decode within a PSNR bound, refusals and guards, on real photos where they are needed."""

from __future__ import annotations

import functools
import hashlib
import io
import threading
import time

import pytest

from pipeline.fetch import (
    FetchOptions,
)
from pipeline.fixtures import payloads
from pipeline.resize import ImageResizer, looks_truncated

# --- resizing --------------------------------------------------------------------------------


def test_resizer_matches_img2dataset_on_real_photos(flickr_dir):
    from img2dataset.resizer import Resizer

    opts = FetchOptions(image_size=128, resize_mode="center_crop", encode_quality=90)
    ours = ImageResizer(opts)
    reference = Resizer(
        image_size=128,
        resize_mode="center_crop",
        resize_only_if_bigger=False,
        encode_quality=90,
        min_image_size=opts.min_image_size,
        max_aspect_ratio=opts.max_aspect_ratio,
    )
    for path in sorted(flickr_dir.glob("*.jpg"))[:20]:
        raw = path.read_bytes()
        got = ours(raw)
        data, width, height, ow, oh, err = reference(io.BytesIO(raw))
        assert err is None and got.ok
        assert (got.data, got.width, got.height) == (data, width, height) == (data, 128, 128)
        assert (got.original_width, got.original_height) == (ow, oh)
        assert got.sha256 == hashlib.sha256(raw).hexdigest()


@functools.lru_cache(maxsize=1)
def synthetic_images() -> dict[str, bytes]:
    """Odd shapes and kinds: gray, alpha, tiny (upscaled), wide, 16-bit-free PNG, WebP."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    out = {}

    def save(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()

    photo = Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8))
    save("rgb.jpg", photo, "JPEG", quality=90)
    save("gray.jpg", photo.convert("L"), "JPEG")
    save("small.png", photo.resize((90, 60)), "PNG")
    save("wide.jpg", photo.resize((800, 130)), "JPEG")
    save("tall.png", photo.resize((120, 700)), "PNG")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 255, (300, 420), dtype=np.uint8)))
    save("alpha.png", rgba, "PNG")
    save("gray-alpha.png", photo.convert("LA"), "PNG")
    save("palette.png", photo.convert("P"), "PNG")
    save("photo.webp", photo, "WEBP", quality=80)
    save("exact.jpg", photo.resize((256, 256)), "JPEG")
    return out


@pytest.mark.parametrize(
    "mode", ["keep_ratio", "center_crop", "border", "keep_ratio_largest", "no"]
)
@pytest.mark.parametrize("only_if_bigger", [False, True])
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_resizer_is_byte_identical_to_img2dataset_without_its_lock(mode, only_if_bigger, fmt):
    """Our thread-safe path gives img2dataset's bytes in every mode, for odd images too
    (the reduced decode is off here: it only ever applies to large JPEGs)."""
    from img2dataset.resizer import Resizer

    quality = 3 if fmt == "png" else 85
    opts = FetchOptions(
        image_size=256, resize_mode=mode, resize_only_if_bigger=only_if_bigger,
        encode_format=fmt, encode_quality=quality, min_image_size=0, max_aspect_ratio=100,
    )  # fmt: skip
    ours = ImageResizer(opts, reduced_decode=False)
    reference = Resizer(
        image_size=256, resize_mode=mode, resize_only_if_bigger=only_if_bigger,
        encode_format=fmt, encode_quality=quality, min_image_size=0, max_aspect_ratio=100,
    )  # fmt: skip
    for name, raw in synthetic_images().items():
        data, width, height, ow, oh, err = reference(io.BytesIO(raw))
        got = ours(raw)
        assert err is None and got.ok, (name, err, got.reason)
        assert (got.width, got.height, got.original_width, got.original_height) == (
            width, height, ow, oh,
        ), name  # fmt: skip
        assert got.data == data, name


def test_resizer_refusals_match_img2dataset():
    opts = FetchOptions(min_image_size=100, max_aspect_ratio=3.0)
    resizer = ImageResizer(opts)
    images = synthetic_images()
    assert resizer(images["small.png"]).reason == "too_small"
    assert resizer(images["wide.jpg"]).reason == "aspect_ratio"
    assert resizer(b"\xff\xd8\xff\xe0garbage").reason.startswith(("unreadable", "not_an"))


@functools.lru_cache(maxsize=1)
def big_jpegs() -> dict[str, bytes]:
    """Large JPEGs made here (so the test never skips): a photo scaled up with fine
    texture added, a 1-pixel checkerboard (the worst case for aliasing), and a photo
    turned by EXIF orientation 6."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    out = {}
    base = np.linspace(0, 255, 2400, dtype=np.float64)
    photo = (base[None, :, None] * 0.6 + base[:1600, None, None] * 0.4).repeat(3, axis=2)
    photo += rng.normal(0, 18, photo.shape)
    img = Image.fromarray(photo.clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    out["texture"] = buf.getvalue()
    checker = ((np.indices((1500, 2000)).sum(axis=0) % 2) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(checker).save(buf, format="JPEG", quality=95)
    out["checker-gray"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, exif=exif.tobytes(), progressive=True)
    out["rotated-progressive"] = buf.getvalue()
    return out


def wallpaper_jpegs(limit: int = 8) -> dict[str, bytes]:
    """Real 4-15 MP photos from Debian's plasma-workspace-wallpapers, when installed."""
    import glob
    import os

    found = sorted(
        {os.path.realpath(p) for p in glob.glob("/usr/share/wallpapers/**/*.jpg", recursive=True)}
    )
    found = [p for p in found if os.path.getsize(p) > 200_000][:limit]
    return {os.path.relpath(p, "/usr/share/wallpapers"): open(p, "rb").read() for p in found}


def decoded(data: bytes):
    import cv2
    import numpy as np

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def assert_reduced_decode_quality(images: dict[str, bytes], mode: str) -> None:
    """Reduced-size JPEG decode against a full decode: the fast path is taken, the sizes
    are the same and the final pixels differ by PSNR >= 35 dB (PNG output, so the encoder
    adds nothing)."""
    from pipeline.resize import _inspect, psnr

    opts = FetchOptions(image_size=256, resize_mode=mode, encode_format="png", encode_quality=1)
    fast, full = ImageResizer(opts), ImageResizer(opts, reduced_decode=False)
    for name, raw in images.items():
        assert fast._reduction(_inspect(raw)) > 1, name
        a, b = fast(raw), full(raw)
        assert a.ok and b.ok, name
        assert (a.width, a.height, a.original_width, a.original_height) == (
            b.width,
            b.height,
            b.original_width,
            b.original_height,
        ), name
        quality = psnr(decoded(a.data), decoded(b.data))
        assert quality >= 35.0, (name, quality)


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_reduced_decode_costs_little_quality(mode):
    assert_reduced_decode_quality(big_jpegs(), mode)
    rotated = ImageResizer(FetchOptions(image_size=256, resize_mode=mode))(
        big_jpegs()["rotated-progressive"]
    )
    assert rotated.original_width == 1600 and rotated.original_height == 2400  # upright


def test_reduced_decode_on_real_large_photos():
    """Debian's plasma-workspace-wallpapers (4-15 MP JPEGs), when installed."""
    images = wallpaper_jpegs(limit=24)
    if not images:
        pytest.skip("plasma-workspace-wallpapers is not installed (/usr/share/wallpapers)")
    assert_reduced_decode_quality(
        {k: v for k, v in images.items() if min(_size(v)) >= 4 * 256}, "keep_ratio"
    )


def _size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


def test_small_images_are_never_decoded_reduced(flickr_dir):
    from pipeline.resize import _inspect

    resizer = ImageResizer(FetchOptions(image_size=256))
    for path in sorted(flickr_dir.glob("*.jpg"))[:50]:
        assert resizer._reduction(_inspect(path.read_bytes())) == 1  # ~500x375: too small


def test_resizing_runs_in_parallel_threads():
    """No process-wide lock: two threads resize at once (OpenCV releases the GIL)."""
    import pipeline.resize as resize_mod

    assert not hasattr(resize_mod, "_RESIZE_LOCK")
    resizer = ImageResizer(FetchOptions(image_size=256), reduced_decode=False)
    raw = big_jpegs()["texture"]
    active, peak, lock = [0], [0], threading.Lock()
    real = resize_mod.cv2.imdecode

    def watched(*args):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return real(*args)
        finally:
            with lock:
                active[0] -= 1

    resize_mod.cv2.imdecode = watched
    try:
        threads = [threading.Thread(target=resizer, args=(raw,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        resize_mod.cv2.imdecode = real
    assert peak[0] >= 2


def test_truncation_check_has_no_false_positives_on_real_photos(flickr_dir):
    for path in sorted(flickr_dir.glob("*.jpg"))[:300]:
        raw = path.read_bytes()
        assert not looks_truncated(raw, "JPEG"), path.name
        assert looks_truncated(raw[: len(raw) // 2], "JPEG"), path.name


def test_resizer_rejects_elongated_and_keeps_bomb_guard():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 20), (1, 2, 3)).save(buf, format="PNG")
    resizer = ImageResizer(FetchOptions(max_aspect_ratio=10.0))
    assert resizer(buf.getvalue()).reason == "aspect_ratio"
    assert resizer(payloads.bomb_png()).reason == "decompression_bomb"
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard stays on
