"""Video transforms on ``torchvision.transforms.v2`` (no pytorchvideo transforms, which fail to import on
torchvision >= 0.17), plus batch-level mixup / cutmix with soft targets.

Decoded frames ``(T, H, W, 3)`` uint8 become ``tv_tensors.Video`` ``(T, 3, H, W)``, so every v2 transform applies
the same random parameters to all frames of a clip; the output is the model layout ``(3, T, H, W)`` float.

Mixup (Zhang et al., arXiv:1710.09412) and CutMix (Yun et al., arXiv:1905.04899) as used for MViT
(Fan et al., arXiv:2104.11227) mix whole clips; the cutmix box is the same in every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from .samplers import spatial_crop

__all__ = ["KINETICS_MEAN", "KINETICS_STD", "NormalizeClip", "to_video", "train_transform", "eval_transform",
           "MixupCutmix", "soft_cross_entropy"]

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def to_video(frames: np.ndarray) -> tv_tensors.Video:
    """uint8 ``(T, H, W, 3)`` numpy -> ``tv_tensors.Video`` ``(T, 3, H, W)``."""
    return tv_tensors.Video(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))


class NormalizeClip:
    """uint8 video ``(T, C, H, W)`` (any strides) -> normalised float clip ``(C, T, H, W)``, contiguous.

    The same values as ``v2.ToDtype(float32, scale=True)`` + ``v2.Normalize`` followed by a permute, in one strided
    uint8 -> float copy and two in-place ops: ``(x - 255 mean) / (255 std)``. On the channels-last crops the
    decoder gives, the v2 pair plus the final ``.contiguous()`` cost about 7x more (``benchmarks/video_loader.py``).

    Args:
        mean: Per-channel mean on the 0-1 scale.
        std: Per-channel standard deviation on the 0-1 scale.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean={tuple(mean)} and std={tuple(std)} must have the same length and std > 0")
        self.shift = torch.tensor([255.0 * m for m in mean]).view(-1, 1, 1, 1)  # (C, 1, 1, 1)
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1, 1)

    def __call__(self, video: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalise ``video`` ``(T, C, H, W)``; ``out`` (float ``(C, T, H, W)``) receives it in place if given."""
        if video.ndim != 4 or video.shape[1] != self.shift.shape[0]:
            raise ValueError(f"expected a video (T, {self.shift.shape[0]}, H, W), got shape {tuple(video.shape)}")
        T, C, H, W = video.shape
        if out is None:
            out = torch.empty((C, T, H, W), dtype=torch.float32)
        out.copy_(video.as_subclass(torch.Tensor).permute(1, 0, 2, 3))  # one strided pass, uint8 -> float
        return out.sub_(self.shift).mul_(self.scale)


def train_transform(crop_size: int, short_side: Optional[int] = None, scale: Tuple[float, float] = (0.4, 1.0),
                    hflip: bool = True, randaugment: Optional[Tuple[int, int]] = None,
                    mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD) -> Callable:
    """Training pipeline: short-side scale -> random resized crop -> flip -> [RandAugment] -> float -> normalise.

    Args:
        crop_size: Output height and width.
        short_side: Short side after the first resize (default ``crop_size * 256 / 224``).
        scale: Area range of the random resized crop.
        hflip: Random horizontal flip (turn off for direction-sensitive classes such as the synthetic motion set).
        randaugment: ``(num_ops, magnitude)`` for ``v2.RandAugment``, or ``None``.

    Returns:
        A callable mapping uint8 ``(T, H, W, 3)`` numpy frames to a float tensor ``(3, T, crop, crop)``.
    """
    short_side = short_side or round(crop_size * 256 / 224)
    steps: List[Callable] = [v2.Resize(short_side, antialias=True),
                             v2.RandomResizedCrop(crop_size, scale=scale, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment is not None:
        steps.append(v2.RandAugment(num_ops=randaugment[0], magnitude=randaugment[1]))
    pipeline, finish = v2.Compose(steps), NormalizeClip(mean, std)
    return lambda frames: finish(pipeline(to_video(frames)))  # (T, H, W, 3) uint8 -> (C, T, crop, crop) float


def eval_transform(crop_size: int, num_crops: int = 1, mean: Sequence[float] = KINETICS_MEAN,
                   std: Sequence[float] = KINETICS_STD, short_side: Optional[int] = None) -> Callable:
    """Test pipeline: short side -> ``short_side`` (default ``crop_size``), then ``num_crops`` crops along the long
    side (STAM's protocol, e.g., scales the short side to 256 and takes 224 crops).

    Returns:
        A callable mapping uint8 ``(T, H, W, 3)`` frames to a float tensor ``(num_crops, 3, T, crop, crop)``.
    """
    resize = v2.Resize(short_side or crop_size, antialias=True)
    finish = NormalizeClip(mean, std)

    def apply(frames: np.ndarray) -> torch.Tensor:
        video = resize(to_video(frames))  # (T, C, H', W'), short side == crop_size
        T, C = video.shape[:2]
        out = torch.empty((num_crops, C, T, crop_size, crop_size), dtype=torch.float32)  # (S, C, T, h, w)
        for i, crop in enumerate(spatial_crop(video, crop_size, num_crops)):
            finish(crop, out=out[i])
        return out

    return apply


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against hard ``(B,)`` or soft ``(B, K)`` targets."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


@dataclass
class MixupCutmix:
    """Batch-level mixup / cutmix for clips ``(B, C, T, H, W)``; returns mixed clips and soft targets ``(B, K)``.

    Each batch picks cutmix with probability ``switch_prob`` when both are on. The partner of sample ``i`` is
    sample ``B-1-i`` (the flipped batch, as in timm). ``prob`` is the chance that a batch is mixed at all.

    Args:
        num_classes: Number of classes K.
        mixup_alpha: Beta(alpha, alpha) for mixup; 0 turns mixup off.
        cutmix_alpha: Beta(alpha, alpha) for cutmix; 0 turns cutmix off.
        prob: Probability of mixing a batch.
        switch_prob: Probability of cutmix over mixup when both are on.
        label_smoothing: Label smoothing of the one-hot targets.
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0 or not 0 <= self.prob <= 1:
            raise ValueError(f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha} must be >= 0 and "
                             f"prob={self.prob} in [0, 1]")

    def _targets(self, labels: torch.Tensor, lam: float) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        one_hot = F.one_hot(labels, self.num_classes).float() * (1 - self.label_smoothing) + off
        return lam * one_hot + (1 - lam) * one_hot.flip(0)

    def __call__(self, clips: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        B, C, T, H, W = clips.shape
        lam = 1.0
        use_mix = (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and float(torch.rand(())) < self.prob
        if use_mix:
            cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or float(torch.rand(())) < self.switch_prob)
            alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            clips = clips.clone()
            if cutmix:
                y0, y1, x0, x1 = _cut_box(H, W, lam)
                clips[..., y0:y1, x0:x1] = clips.flip(0)[..., y0:y1, x0:x1]  # same box in every frame
                lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
            else:
                clips = lam * clips + (1 - lam) * clips.flip(0)
        return clips, self._targets(labels, lam)


def _cut_box(H: int, W: int, lam: float) -> Tuple[int, int, int, int]:
    ratio = float(np.sqrt(1.0 - lam))
    h, w = int(H * ratio), int(W * ratio)
    cy, cx = int(torch.randint(H, ())), int(torch.randint(W, ()))
    return max(cy - h // 2, 0), min(cy + h // 2, H), max(cx - w // 2, 0), min(cx + w // 2, W)
