"""Shifted-window multi-head self-attention with a relative-position bias, in 2D and 3D.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", arXiv:2103.14030 (2D);
Liu et al., "Video Swin Transformer", arXiv:2106.13230 (3D windows, padding before the cyclic shift).

Key names follow timm and MONAI (``qkv``, ``proj``, ``relative_position_bias_table`` and the non-persistent
``relative_position_index`` buffer), so both load one to one. The bias table and the shifted-window mask are
added to the logits through ``torch.nn.functional.scaled_dot_product_attention``; there is no explicit softmax.

Dataflow of :class:`WindowAttention` on a channels-last grid ``(B, *S, C)``::

    pad S up to a multiple of the window -> cyclic shift by -shift -> partition (B*nW, N, C)
    -> SDPA with bias (H, N, N) [+ mask (nW, 1, N, N)] -> reverse -> shift back -> crop to S
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from backbones.layers.attention import sdpa
from backbones.layers.linear import Linear
from backbones.layers.patch_embed import to_ntuple

__all__ = [
    "WindowAttention", "window_partition", "window_reverse", "relative_position_index", "resolve_window",
    "shifted_window_mask", "window_mask_for", "resize_rel_pos_table", "CLIP_MODES",
]

Ints = Tuple[int, ...]
CLIP_MODES = ("relative", "truncate")
MASK_VALUE = -100.0  # timm and MONAI use -100 (not -inf) between regions that the cyclic shift made adjacent


def window_partition(x: torch.Tensor, window: Ints) -> torch.Tensor:
    """Split a channels-last grid into non-overlapping windows.

    Args:
        x: ``(B, *S, C)`` with every ``S[i]`` divisible by ``window[i]``.
        window: Window size per spatial axis.

    Returns:
        ``(B * nW, N, C)`` with ``N = prod(window)``, windows in row-major order within each sample.
    """
    B, *S, C = x.shape
    d = len(window)
    x = x.view(B, *[v for s, w in zip(S, window) for v in (s // w, w)], C)  # (B, n1, w1, ..., nd, wd, C)
    perm = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [2 * d + 1]
    return x.permute(perm).reshape(-1, math.prod(window), C)  # (B*nW, N, C)


def window_reverse(windows: torch.Tensor, window: Ints, size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, N, C)`` -> ``(B, *size, C)``."""
    d = len(window)
    C = windows.shape[-1]
    grid = [s // w for s, w in zip(size, window)]
    x = windows.view(-1, *grid, *window, C)  # (B, n1, ..., nd, w1, ..., wd, C)
    perm = [0] + [v for i in range(d) for v in (1 + i, 1 + d + i)] + [2 * d + 1]
    return x.permute(perm).reshape(-1, *size, C)  # (B, *size, C)


def relative_position_index(window: Sequence[int], table_window: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Index into a ``prod(2 * table_window - 1)``-row bias table for every token pair of a window.

    Args:
        window: Window size ``(w1, ..., wd)``.
        table_window: Window the table was built for (default ``window``); must be ``>= window`` per axis.

    Returns:
        ``(N, N)`` long tensor, ``N = prod(window)``.
    """
    table_window = tuple(window if table_window is None else table_window)
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # (d, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (d, N, N)
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for i, t in enumerate(table_window):
        stride = math.prod(2 * u - 1 for u in table_window[i + 1:])
        index += (rel[i] + t - 1) * stride
    return index  # (N, N)


def resolve_window(size: Sequence[int], window: Ints, shift: Ints) -> Tuple[Ints, Ints]:
    """Clip the window to axes no larger than it and drop the shift there (timm and MONAI rule)."""
    win = tuple(s if s <= w else w for s, w in zip(size, window))
    sh = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
    return win, sh


def shifted_window_mask(padded: Sequence[int], window: Ints, shift: Ints,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """Additive mask that keeps tokens from attending across the seams made by the cyclic shift.

    Args:
        padded: Grid size after padding (divisible by ``window``).
        window: Effective window size.
        shift: Effective shift; an axis with shift 0 is not split.

    Returns:
        ``(nW, N, N)`` float tensor of 0 (same region) and -100 (different regions).
    """
    label = torch.zeros(padded, dtype=torch.long, device=device)
    for axis, (s, w, h) in enumerate(zip(padded, window, shift)):
        if h == 0:
            continue
        pos = torch.arange(s, device=device)
        region = (pos >= s - w).long() + (pos >= s - h).long()  # 0 | 1 | 2 along this axis
        label = label * 3 + region.view([-1 if i == axis else 1 for i in range(len(padded))])
    labels = window_partition(label[None, ..., None], window).squeeze(-1)  # (nW, N)
    mask = labels[:, None, :] != labels[:, :, None]  # (nW, N, N)
    return torch.zeros(mask.shape, device=device).masked_fill_(mask, MASK_VALUE)


def window_mask_for(size: Sequence[int], window: Ints, shift: Ints,
                    device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """The mask a block with ``window``/``shift`` needs on a grid of ``size`` (``None`` when it does not shift)."""
    win, sh = resolve_window(size, window, shift)
    if not any(sh):
        return None
    padded = [math.ceil(s / w) * w for s, w in zip(size, win)]
    return shifted_window_mask(padded, win, sh, device)


def resize_rel_pos_table(table: torch.Tensor, window: Sequence[int],
                         src_window: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Resample a flat ``(prod(2w-1), H)`` bias table to another window (bicubic in 2D, trilinear in 3D).

    Args:
        table: Source table.
        window: Target window size.
        src_window: Source window; inferred as square/cubic from the table length when ``None``.
    """
    d = len(window)
    if src_window is None:
        side = round(table.shape[0] ** (1.0 / d))
        if side ** d != table.shape[0]:
            raise ValueError(f"cannot infer the source window of a {tuple(table.shape)} bias table; pass src_window")
        src = (side,) * d
    else:
        src = tuple(2 * w - 1 for w in src_window)
    dst = tuple(2 * w - 1 for w in window)
    if src == dst:
        return table
    H = table.shape[1]
    grid = table.T.reshape(1, H, *src).float()  # (1, H, *src)
    mode = "bicubic" if d == 2 else "trilinear"
    out = F.interpolate(grid, size=dst, mode=mode, align_corners=False)  # (1, H, *dst)
    return out.reshape(H, -1).T.to(table.dtype).contiguous()  # (prod(dst), H)


class WindowAttention(nn.Module):
    """(Shifted-)window self-attention on a channels-last 2D/3D grid.

    A drop-in ``attn_layer`` for :class:`backbones.layers.Block`: it is called on the normalised grid
    ``(B, *S, C)`` and returns the same shape, so a Swin block is ``Block(attn_layer=partial(WindowAttention,
    window_size=7, shift=True, spatial_dims=3))``. Grids not divisible by the window are zero-padded (after the
    norm, before the shift, as in Video Swin and MONAI); axes no larger than the window use the whole axis and
    no shift.

    Args:
        dim: Channels ``C``.
        num_heads: Heads; must divide ``dim``.
        window_size: Window per axis (int or tuple); sizes the bias table.
        shift: Shift windows by half a window (SW-MSA) instead of regular windows (W-MSA).
        spatial_dims: 2 or 3 (taken from ``window_size`` when it is a tuple).
        qkv_bias: Bias on the fused ``qkv`` projection.
        qk_norm: Not supported by Swin (must be ``False``; present for the ``Block`` signature).
        attn_drop: Attention dropout.
        proj_drop: Dropout after ``proj``.
        norm_layer: Unused (``Block`` signature).
        clip_mode: How a window clipped to a small axis reads the table: ``"relative"`` uses the true relative
            offsets; ``"truncate"`` takes ``relative_position_index[:N, :N]`` like MONAI's ``SwinUNETR`` and
            the released Swin-UNETR weights (needed for exact parity with them).

    Example::

        >>> attn = WindowAttention(32, num_heads=2, window_size=4, shift=True, spatial_dims=3)
        >>> attn(torch.randn(2, 8, 6, 8, 32)).shape
        torch.Size([2, 8, 6, 8, 32])
    """

    def __init__(self, dim: int, num_heads: int = 8, window_size: Union[int, Sequence[int]] = 7, shift: bool = False,
                 spatial_dims: Optional[int] = None, qkv_bias: bool = True, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer: Optional[Type[nn.Module]] = None,
                 clip_mode: str = "relative") -> None:
        super().__init__()
        spatial_dims = spatial_dims or (len(window_size) if not isinstance(window_size, int) else 2)
        if dim % num_heads:
            raise ValueError(f"dim {dim} should be divisible by num_heads {num_heads}")
        if qk_norm:
            raise ValueError("qk_norm=True is not supported by WindowAttention")
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
        self.window_size = to_ntuple(window_size, spatial_dims, "window_size")
        self.shift_size = tuple(w // 2 for w in self.window_size) if shift else (0,) * spatial_dims
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.clip_mode = clip_mode
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in self.window_size), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift_size={self.shift_size}, num_heads={self.num_heads}"

    def rel_pos_bias(self, window: Ints) -> torch.Tensor:
        """Relative-position bias ``(H, N, N)`` for an (effective) window."""
        N = math.prod(window)
        if window == self.window_size:
            index = self.relative_position_index
        elif self.clip_mode == "truncate":
            index = self.relative_position_index[:N, :N]
        else:
            index = relative_position_index(window, self.window_size).to(self.relative_position_index.device)
        bias = self.relative_position_bias_table[index.reshape(-1)].view(N, N, -1)  # (N, N, H)
        return bias.permute(2, 0, 1)  # (H, N, N)

    def attend(self, windows: torch.Tensor, window: Ints, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Self-attention inside each window.

        Args:
            windows: ``(B * nW, N, C)`` tokens, windows of one sample contiguous.
            window: Effective window size (``prod(window) == N``).
            mask: Optional additive ``(nW, N, N)`` shifted-window mask.

        Returns:
            ``(B * nW, N, C)``.
        """
        B_, N, C = windows.shape
        qkv = self.qkv(windows).view(B_, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B*nW, H, N, Dh)
        bias = self.rel_pos_bias(window).to(q.dtype).unsqueeze(0)  # (1, H, N, N)
        if mask is not None:
            # fold the windows into the head axis so the mask broadcasts over the batch without a copy; 4D
            # inputs with a 4D mask keep SDPA on its fused kernels (5D inputs or a 3D mask fall back to math)
            nW = mask.shape[0]
            bias = (bias + mask.to(q.dtype).unsqueeze(1)).reshape(1, nW * self.num_heads, N, N)  # (1, nW*H, N, N)
            q, k, v = (t.reshape(B_ // nW, nW * self.num_heads, N, self.head_dim) for t in (q, k, v))
        x = sdpa(q, k, v, bias, None, self.attn_drop if self.training else 0.0)  # (.., H, N, Dh)
        x = x.reshape(B_, self.num_heads, N, self.head_dim).transpose(1, 2).reshape(B_, N, C)  # (B*nW, N, C)
        return self.proj_drop(self.proj(x))

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: x ``(B, *S, C)``; attn_bias: the precomputed ``window_mask_for(S, ...)`` (computed when
        ``None``); attn_mask: unsupported, must be ``None``. Returns ``(B, *S, C)``."""
        if attn_mask is not None:
            raise ValueError("WindowAttention takes its shifted-window mask as attn_bias, not attn_mask")
        B, *S, C = x.shape
        d = len(S)
        if d != len(self.window_size):
            raise ValueError(f"expected a {len(self.window_size)}D grid (B, *S, C), got shape {tuple(x.shape)}")
        win, shift = resolve_window(S, self.window_size, self.shift_size)
        pad = [(w - s % w) % w for s, w in zip(S, win)]
        if any(pad):
            x = F.pad(x, [0, 0] + [v for p in reversed(pad) for v in (0, p)])  # (B, *Sp, C)
        Sp = x.shape[1:-1]
        dims = tuple(range(1, d + 1))
        mask = None
        if any(shift):
            x = torch.roll(x, [-h for h in shift], dims)
            mask = attn_bias if attn_bias is not None else shifted_window_mask(Sp, win, shift, x.device)
        x = window_reverse(self.attend(window_partition(x, win), win, mask), win, Sp)  # (B, *Sp, C)
        if any(shift):
            x = torch.roll(x, list(shift), dims)
        if any(pad):
            x = x[(slice(None),) + tuple(slice(0, s) for s in S)].contiguous()  # (B, *S, C)
        return x
