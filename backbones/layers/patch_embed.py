"""Patch and tubelet embeddings.

Patch embedding: Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv:2010.11929.
Tubelet embedding and its "central frame" / "average" (filter inflation) initialisations: Arnab et al.,
"ViViT: A Video Vision Transformer", arXiv:2103.15691, Sec. 3.2 and 3.4.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from backbones.layers.linear import linear

__all__ = ["PatchEmbed", "TubeletEmbed", "inflate_conv2d_weight", "to_ntuple"]

IntOrSeq = Union[int, Sequence[int]]


def to_ntuple(x: IntOrSeq, n: int, name: str = "value") -> Tuple[int, ...]:
    """``4 -> (4, 4, 4)``; a sequence must already have length ``n``."""
    if isinstance(x, int):
        return (x,) * n
    t = tuple(int(v) for v in x)
    if len(t) != n:
        raise ValueError(f"{name} must be an int or have {n} entries, got {x!r}")
    return t


class PatchEmbed(nn.Module):
    """Non-overlapping patches of a 2D or 3D image, projected by a strided convolution (key ``proj``).

    Args:
        img_size: Input size (H, W) or (D, H, W); ``None`` accepts any size divisible by the patch.
        patch_size: Patch size per spatial axis.
        in_chans: Input channels.
        embed_dim: Output width ``C``.
        spatial_dims: 2 or 3.
        norm_layer: Optional norm on the tokens.
        flatten: Return tokens ``(B, N, C)``; otherwise a channels-last grid ``(B, *grid, C)``.
        bias: Bias of the projection.
        strict_img_size: Require the input to be exactly ``img_size``.
        kernel_size: Conv kernel when it differs from the stride ``patch_size`` (overlapping patches, e.g. MViT's
            ``(3, 7, 7)``); ``None`` means non-overlapping patches.
        padding: Conv padding (with ``kernel_size``).
    """

    def __init__(self, img_size: Optional[IntOrSeq] = 224, patch_size: IntOrSeq = 16, in_chans: int = 3,
                 embed_dim: int = 768, spatial_dims: int = 2, norm_layer: Optional[Type[nn.Module]] = None,
                 flatten: bool = True, bias: bool = True, strict_img_size: bool = False,
                 kernel_size: Optional[IntOrSeq] = None, padding: IntOrSeq = 0) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.patch_size = to_ntuple(patch_size, spatial_dims, "patch_size")
        self.img_size = None if img_size is None else to_ntuple(img_size, spatial_dims, "img_size")
        # kernel_size/padding: an overlapping conv stem (MViT: kernel (3, 7, 7), stride (2, 4, 4), padding (1, 3, 3)).
        self.kernel_size = to_ntuple(kernel_size, spatial_dims, "kernel_size") if kernel_size else self.patch_size
        self.padding = to_ntuple(padding, spatial_dims, "padding")
        if self.img_size is not None and any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        self.grid_size = None if self.img_size is None else self.output_grid(self.img_size)
        self.num_patches = None if self.grid_size is None else math.prod(self.grid_size)
        self.flatten = flatten
        self.strict_img_size = strict_img_size
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, kernel_size=self.kernel_size, stride=self.patch_size,
                         padding=self.padding, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def output_grid(self, size: Sequence[int]) -> Tuple[int, ...]:
        """Token grid for an input of spatial ``size`` (``size // patch`` for non-overlapping patches)."""
        return tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(size, self.padding, self.kernel_size,
                                                                        self.patch_size))

    def _check(self, x: torch.Tensor) -> None:
        size = tuple(x.shape[2:])
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}D input (B, C, *spatial), got shape {tuple(x.shape)}")
        if self.strict_img_size and size != self.img_size:
            raise ValueError(f"input size {size} does not match img_size {self.img_size}")
        if any(s % p for s, p in zip(size, self.patch_size)):
            raise ValueError(f"input size {size} is not divisible by patch_size {self.patch_size}")

    @property
    def non_overlapping(self) -> bool:
        """Whether the projection is a plain patchify (kernel = stride, no padding), i.e. a linear map per patch."""
        return self.kernel_size == self.patch_size and not any(self.padding)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Non-overlapping patches as rows: ``(B, C_in, *S)`` -> ``(B, *grid, C_in * prod(patch))``, in the
        ``(C_in, *patch)`` order of the flattened conv kernel."""
        B, C = x.shape[:2]
        n = self.spatial_dims
        grid = [s // p for s, p in zip(x.shape[2:], self.patch_size)]
        split = [d for g, p in zip(grid, self.patch_size) for d in (g, p)]  # g0, p0, g1, p1, ...
        x = x.reshape(B, C, *split)  # (B, C, g0, p0, g1, p1[, g2, p2])
        order = [0] + [2 + 2 * i for i in range(n)] + [1] + [3 + 2 * i for i in range(n)]
        return x.permute(order).reshape(B, *grid, -1)  # (B, *grid, C * prod(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *S)`` -> ``(B, N, C)`` (or ``(B, *grid, C)`` when not flattening).

        Under CPU autocast, non-overlapping patches are projected as one matrix multiply of the patch rows with the
        flattened conv kernel (the same linear map as the strided convolution, key ``proj`` unchanged): the
        convolution's bf16 weight gradient for a 16^3 kernel is several times slower (UNETR 96^3: 244 ms of a
        1.9 s step), the matrix multiply's is not. Elsewhere (fp32, CUDA) and for overlapping stems
        (``kernel_size``/``padding``) the convolution runs: in fp32 it is as fast and saves no patch copy.
        """
        self._check(x)
        if self.non_overlapping and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            x = linear(self._patchify(x), self.proj.weight.flatten(1), self.proj.bias)  # (B, *grid, C)
            return self.norm(x.flatten(1, -2) if self.flatten else x)  # (B, N, C) | (B, *grid, C)
        x = self.proj(x)  # (B, C, *grid)
        x = x.flatten(2).transpose(1, 2) if self.flatten else x.movedim(1, -1)  # (B, N, C) | (B, *grid, C)
        return self.norm(x)


def inflate_conv2d_weight(weight: torch.Tensor, t: int, mode: str = "central") -> torch.Tensor:
    """Inflate a 2D patch kernel ``(C, Cin, p, p)`` to a tubelet kernel ``(C, Cin, t, p, p)``.

    Args:
        weight: 2D convolution weight.
        t: Temporal kernel size.
        mode: ``"central"`` puts the 2D kernel on the central frame and zeros elsewhere (ViViT's best init);
            ``"average"`` replicates it on every frame divided by ``t`` (I3D filter inflation).
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4D conv weight, got shape {tuple(weight.shape)}")
    if mode == "central":
        out = weight.new_zeros(weight.shape[:2] + (t,) + weight.shape[2:])  # (C, Cin, t, p, p)
        out[:, :, t // 2] = weight
        return out
    if mode == "average":
        return weight.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    raise ValueError(f"inflation mode must be 'central' or 'average', got {mode!r}")


class TubeletEmbed(PatchEmbed):
    """Tubelet embedding for video ``(B, C, T, H, W)``: a 3D conv with temporal stride ``tubelet_size``.

    Args:
        img_size: Spatial size (H, W) or int.
        patch_size: Spatial patch size.
        tubelet_size: Temporal extent and stride of a tubelet.
        num_frames: Frames per clip (``None`` accepts any multiple of ``tubelet_size``).
        in_chans: Input channels.
        embed_dim: Output width ``C``.
        norm_layer: Optional norm on the tokens.
        flatten: Return ``(B, T'*N, C)``; otherwise ``(B, T', H', W', C)``.
    """

    def __init__(self, img_size: Optional[IntOrSeq] = 224, patch_size: IntOrSeq = 16, tubelet_size: int = 2,
                 num_frames: Optional[int] = 16, in_chans: int = 3, embed_dim: int = 768,
                 norm_layer: Optional[Type[nn.Module]] = None, flatten: bool = True, bias: bool = True) -> None:
        ps = to_ntuple(patch_size, 2, "patch_size")
        size = None if img_size is None or num_frames is None else (num_frames,) + to_ntuple(img_size, 2, "img_size")
        super().__init__(size, (tubelet_size,) + ps, in_chans, embed_dim, 3, norm_layer, flatten, bias)
        self.tubelet_size = tubelet_size

    def load_2d_weight(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, mode: str = "central") -> None:
        """Initialise from a 2D patch-embedding conv (``proj.weight`` of an image ViT)."""
        with torch.no_grad():
            self.proj.weight.copy_(inflate_conv2d_weight(weight, self.tubelet_size, mode))
            if bias is not None and self.proj.bias is not None:
                self.proj.bias.copy_(bias)
