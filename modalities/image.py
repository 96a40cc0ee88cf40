"""Image modality: preprocessing from PIL images, arrays or tensors, and the conv patchify stem.

Accepted inputs per sample (``None`` marks a sample without an image):
- ``PIL.Image.Image`` in any mode (converted to RGB, or to L for one-channel students);
- ``numpy.ndarray`` shaped (H, W), (H, W, 1|3|4) as uint8 0-255 or float 0-1;
- ``torch.Tensor`` shaped (C, H, W) or (H, W) as float 0-1 or uint8.
Conversions, all tested: grey to RGB by repeating the channel, RGBA to RGB by dropping alpha, RGB to grey
(ITU-R 601 luma) for one-channel students. Anything else is an error naming the sample and the shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.modalities._stem import ConvPatchStem
from zoo.modalities.base import Modality, register_modality

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageConfig:
    """Image stem settings.

    Args:
        image_size: images are resized to image_size x image_size.
        in_chans: 3 for RGB, 1 for greyscale.
        patch_size: stride of the stem (a power of two); the stem yields (image_size / patch_size)^2 tokens.
        stem_channels: width of the stem's intermediate convs.
        mean, std: per-channel normalisation after scaling to 0-1.
    """

    image_size: int = 32
    in_chans: int = 3
    patch_size: int = 4
    stem_channels: int = 32
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}.")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3; got {self.in_chans}.")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.in_chans:
                raise ValueError(f"image {name} has {len(getattr(self, name))} values; in_chans is {self.in_chans}.")


def to_chw_float(image, index: int) -> torch.Tensor:
    """One image in any accepted form -> float tensor (C, H, W) in 0-1."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(
                f"image of sample {index} has array shape {image.shape}; "
                "expected (H, W) or (H, W, C) with C in 1, 3, 4."
            )
        if arr.dtype == np.uint8:
            t = torch.from_numpy(arr.astype(np.float32)).div_(255.0)  # astype copies: PIL arrays are read-only
        elif np.issubdtype(arr.dtype, np.floating):
            t = torch.from_numpy(np.array(arr, dtype=np.float32))
        else:
            raise TypeError(f"image of sample {index} has dtype {arr.dtype}; expected uint8 (0-255) or float (0-1).")
        return t.permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        t = image
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"image of sample {index} has tensor shape {tuple(image.shape)}; expected (C, H, W) with C in 1, 3, 4."
            )
        return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()
    raise TypeError(
        f"image of sample {index} is a {type(image).__name__}; expected a PIL image, a numpy array or a torch tensor."
    )


def match_channels(t: torch.Tensor, in_chans: int) -> torch.Tensor:
    if t.shape[0] == 4:  # RGBA: drop alpha
        t = t[:3]
    if in_chans == 3 and t.shape[0] == 1:
        return t.expand(3, -1, -1)
    if in_chans == 1 and t.shape[0] == 3:
        return (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]).unsqueeze(0)
    return t


class ImagePreprocessor:
    """Raw images -> ``pixel_values`` (B, C, S, S) normalised, and ``image_mask`` (B,)."""

    def __init__(self, config: ImageConfig):
        self.config = config
        self.mean = torch.tensor(config.mean).view(-1, 1, 1)
        self.std = torch.tensor(config.std).view(-1, 1, 1)

    def __call__(self, images: Sequence) -> dict[str, torch.Tensor]:
        c, s = self.config.in_chans, self.config.image_size
        out = torch.zeros(len(images), c, s, s)
        present = []
        for i, image in enumerate(images):
            if image is None:
                present.append(False)
                continue
            t = match_channels(to_chw_float(image, i), c)
            if t.shape[1] == 0 or t.shape[2] == 0:
                raise ValueError(f"image of sample {i} is empty (shape {tuple(t.shape)}).")
            if t.shape[1:] != (s, s):
                t = F.interpolate(t.unsqueeze(0), size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
            out[i] = (t - self.mean) / self.std
            present.append(True)
        return {"pixel_values": out, "image_mask": torch.tensor(present, dtype=torch.bool)}


class ImageStem(ConvPatchStem):
    """``pixel_values`` (B, C, S, S) -> tokens (B, (S/p)^2, D)."""

    def __init__(self, config: ImageConfig, embed_dim: int, act_layer=nn.GELU):
        g = config.image_size // config.patch_size
        super().__init__(config.in_chans, config.stem_channels, embed_dim, config.patch_size, (g, g), act_layer)
        self.config = config

    def forward(self, pixel_values: torch.Tensor):
        c, s = self.config.in_chans, self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c, s, s):
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; this student expects (batch, {c}, {s}, {s}). "
                "Run the images through the student's preprocess() first."
            )
        return super().forward(pixel_values)


def example_image(config: ImageConfig, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random pixels through the preprocessing."""
    s = config.image_size
    return ImagePreprocessor(config)([rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(batch_size)])


IMAGE = register_modality(
    Modality(
        name="image",
        order=1,
        config=ImageConfig,
        preprocessor=ImagePreprocessor,
        stem=ImageStem,
        input_keys=("pixel_values", "image_mask"),
        pipeline_tag="image-classification",
        example=example_image,
    )
)
