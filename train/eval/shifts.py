"""Synthetic distribution shifts in the style of ImageNet-C (Hendrycks and Dietterich, 2019).

Six families, each at severities 1..5 (severity 0 is no shift at all):

| family     | what it does                                    | parameter at severity 1..5  |
|------------|-------------------------------------------------|-----------------------------|
| `noise`    | additive Gaussian noise on [0, 1] pixels        | std .08 .12 .18 .26 .38     |
| `blur`     | Gaussian blur                                   | sigma .5 1 2 3.5 5 % of side|
| `jpeg`     | JPEG re-encoding                                | quality 25 18 12 8 4        |
| `contrast` | deviations from the image mean scaled down      | kept .4 .3 .2 .1 .05        |
| `haze`     | `J t + A (1 - t)`, a smooth random transmission | mean t .8 .65 .5 .35 .2     |
| `pixelate` | box down-sampling and up-sampling               | scale .6 .5 .4 .3 .25       |

Noise, contrast and pixelate use ImageNet-C's values, and haze stands in for its fog.
Blur and JPEG follow ImageNet-C's progression (sigma 1..6 px at 224 px, quality 25..7)
but reach further at the top, so that severity 5 is destructive at any resolution: at
CIFAR's 32 pixels, ImageNet-C's strongest blur (0.9 px) and JPEG (quality 7, whose 8x8
blocks keep the coarse colour layout) leave a small model's accuracy where it was.

A shift is applied at the model's input resolution, after the eval resize and centre
crop and before normalization, as ImageNet-C was made from 224-pixel centre crops; the
blur sigma is a share of the image side. The random families (noise, haze) draw from a
generator seeded by the seed, the family, the severity and the image's own pixels, so a
shifted image is the same in any order, batch size or worker count.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

FAMILIES = ("noise", "blur", "jpeg", "contrast", "haze", "pixelate")
MAX_SEVERITY = 5
PARAMS: dict[str, tuple[float, ...]] = {
    "noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "blur": (0.005, 0.01, 0.02, 0.035, 0.05),
    "jpeg": (25, 18, 12, 8, 4),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "haze": (0.8, 0.65, 0.5, 0.35, 0.2),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
}
HAZE_AIRLIGHT = 0.85  # the light scattered toward the camera, as a grey level
HAZE_VARIATION = 0.15  # how far the transmission wanders from its mean across the image


def shift_name(family: str, severity: int) -> str:
    return f"{family}@{severity}"


def parse_families(spec: str | Sequence[str]) -> list[str]:
    """`noise,blur` or `all` or `none` (or a list) -> validated family names, in order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if names in (["none"], []):
        return []
    if names == ["all"]:
        return list(FAMILIES)
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"unknown shift {bad[0]!r}: choose from {', '.join(FAMILIES)}, all, none")
    return list(dict.fromkeys(names))


def parse_severities(spec: str | Sequence[int]) -> list[int]:
    """`1,3,5` -> [1, 3, 5]; each in 0..5."""
    try:
        values = [int(v) for v in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError as e:
        raise ValueError(f"severities must be integers 0..{MAX_SEVERITY}: {spec!r}") from e
    bad = [v for v in values if not 0 <= v <= MAX_SEVERITY]
    if bad or not values:
        raise ValueError(f"severities must be integers 0..{MAX_SEVERITY}: {spec!r}")
    return sorted(set(values))


def _rng(img: Image.Image, family: str, severity: int, seed: int) -> np.random.Generator:
    h = hashlib.sha256(f"{seed}:{family}:{severity}:{img.size}".encode())
    h.update(img.tobytes())
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


def _to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64) / 255.0


def _to_image(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8), "RGB")


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an [H, W, C] array with mirrored edges."""
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    for axis in (0, 1):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (r, r)
        p = np.pad(a, pad, mode="symmetric")
        n = a.shape[axis]
        a = sum(w * (p[i : i + n] if axis == 0 else p[:, i : i + n]) for i, w in enumerate(k))
    return a


def _smooth_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random field in [-1, 1]: a 4x4 grid of uniforms, bicubically enlarged."""
    coarse = rng.uniform(-1.0, 1.0, (4, 4)).astype(np.float32)
    field = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(field, dtype=np.float64), -1.0, 1.0)


def apply_shift(img: Image.Image, family: str, severity: int, seed: int = 0) -> Image.Image:
    """The image under one shift; severity 0 returns `img` itself, untouched."""
    if family not in FAMILIES:
        raise ValueError(f"unknown shift {family!r}: choose from {', '.join(FAMILIES)}")
    if not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be 0..{MAX_SEVERITY}, not {severity}")
    if severity == 0:
        return img
    img = img if img.mode == "RGB" else img.convert("RGB")
    p = PARAMS[family][severity - 1]
    w, h = img.size
    if family == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(p))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if family == "pixelate":
        small = img.resize((max(1, int(w * p)), max(1, int(h * p))), Image.Resampling.BOX)
        return small.resize((w, h), Image.Resampling.BOX)
    a = _to_array(img)
    if family == "noise":
        a = a + _rng(img, family, severity, seed).normal(0.0, p, a.shape)
    elif family == "blur":
        a = gaussian_blur(a, p * min(w, h))
    elif family == "contrast":
        m = a.mean()
        a = (a - m) * p + m
    elif family == "haze":
        field = _smooth_field(_rng(img, family, severity, seed), w, h)
        t = np.clip(p + HAZE_VARIATION * field, 0.05, 1.0)[..., None]
        a = a * t + HAZE_AIRLIGHT * (1.0 - t)
    return _to_image(a)


class ShiftedTransform:
    """Eval preprocessing with a shift between the crop and the tensor conversion.

    `base` is the model's eval transform (resize, centre crop, to tensor, normalize). The
    image is first resized and cropped to `image_size` here, shifted, then handed to
    `base`, whose resize and crop leave an image of that size unchanged. Picklable, so
    loader workers can use it.
    """

    def __init__(self, base: Callable, image_size: int, family: str, severity: int, seed: int = 0):
        apply_shift(Image.new("RGB", (1, 1)), family, 0)  # validate the family early
        if not 0 <= severity <= MAX_SEVERITY:
            raise ValueError(f"severity must be 0..{MAX_SEVERITY}, not {severity}")
        self.base, self.size = base, int(image_size)
        self.family, self.severity, self.seed = family, severity, seed

    def geometry(self, img: Image.Image) -> Image.Image:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        img = img if img.mode == "RGB" else img.convert("RGB")
        img = TF.resize(img, self.size, interpolation=InterpolationMode.BICUBIC)
        return TF.center_crop(img, self.size)

    def __call__(self, img: Image.Image):
        if self.severity == 0:
            return self.base(img)
        return self.base(apply_shift(self.geometry(img), self.family, self.severity, self.seed))


def shifted_transform(
    base: Callable, image_size: int, family: str, severity: int, seed: int = 0
) -> Callable:
    """`base` itself at severity 0 (no shift means exactly the plain preprocessing)."""
    if severity == 0:
        apply_shift(Image.new("RGB", (1, 1)), family, 0)
        return base
    return ShiftedTransform(base, image_size, family, severity, seed)
