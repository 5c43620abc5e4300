"""Image preprocessing for CLIP: PIL image -> normalized FloatTensor[3, S, S].

Training uses a random resized crop, the paper's only augmentation ("a random square crop
from resized images"); the scale range (0.9, 1.0) keeps most of the image, as open_clip
does. Evaluation resizes the shorter side to S and takes the centre crop. Both convert to
RGB first (palette, grey and alpha images become 3 channels before any resampling) and
normalize with the mean and std OpenAI computed on its training images.
"""

from __future__ import annotations

from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_CROP_SCALE = (0.9, 1.0)


def to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def image_transform(image_size: int, is_train: bool):
    """The callable to apply to each PIL image; its randomness comes from torch's RNG."""
    # torchvision is imported here so that `import train` stays light (DDP workers, CLIs).
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    size = int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    bicubic = InterpolationMode.BICUBIC
    if is_train:
        geometry = [T.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE, interpolation=bicubic)]
    else:
        geometry = [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)]
    return T.Compose([to_rgb, *geometry, T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])
