"""Axial attention along one image axis, with gated relative encodings for q, k and v.

Axial attention: Wang et al., "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation",
arXiv:2003.07853. Gates: Valanarasu et al., "Medical Transformer: Gated Axial-Attention for Medical Image
Segmentation", arXiv:2102.10662, Eq. 2::

    y_i = sum_j softmax_j(q_i.k_j + G_Q q_i.r^q_(i,j) + G_K k_j.r^k_(i,j)) (G_V1 v_j + G_V2 r^v_(i,j))

The relative terms ``G_Q q.r^q + G_K k.r^k`` are built as one additive bias and the attention runs through
``scaled_dot_product_attention`` for all heads and all rows at once. The value term ``r^v`` depends on the
query/key pair, so the attention probabilities are needed for it: they come out of the same SDPA call by
appending an identity matrix to the values (``v' = [v | I]`` gives ``[P v | P]``), and ``P`` is contracted with the
``r^v`` table afterwards. There is no per-head or per-row Python loop.

Relative tables hold ``2 * span - 1`` offsets. An axis shorter than ``span`` uses the central part of the table;
a longer one linearly resamples the table, so a model built for 128 px runs at 64 px or 256 px (the official MedT
code breaks as soon as the input size differs from ``img_size``).

Two variants (``variant=``):
  * ``"official"`` (the official MedT code, ``lib/models/axialnet.py``; MedT's default, so its checkpoints load and
    give the official outputs): no ``1/sqrt(d)`` scale; each logit term is batch-normalised before the sum
    (``norm_logits`` over the ``3 * heads`` maps ``[q.k | G_Q q.r^q | G_K k.r^k]``, or the ``heads`` maps of
    ``q.k`` without relative encodings; the official ``bn_similarity``) and each output term before theirs
    (``norm_out`` over ``2 * out_dim`` channels ``[G_V1 P v | G_V2 P r^v]`` interleaved per channel, the official
    ``bn_output``). The attention runs as explicit matmuls (the per-term norms sit between the logits and the
    softmax).
  * ``"eq2"``: the logits are ``scale * (q.k + G_Q q.r^q + G_K k.r^k)`` as in Eq. 2, through SDPA, and one norm
    follows the gated sum. In training mode the official per-term BatchNorms divide out the gate values, so the
    gates barely act there; here they weigh the terms against each other.

In both, the gates are trainable from the start (the official code creates them with ``requires_grad=False``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from backbones.layers.attention import sdpa
from engine.choices import check_choice

__all__ = ["AxialAttention", "relative_table", "GATE_INIT", "VARIANTS"]

#: Initial gate values (G_Q, G_K, G_V2, G_V1) of MedT: f_qr, f_kr, f_sve = 0.1 and f_sv = 1.0.
GATE_INIT = (0.1, 0.1, 0.1, 1.0)
#: ``variant`` values: the official MedT per-term norms, or Eq. 2 with one output norm.
VARIANTS = ("official", "eq2")


def relative_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Gather a relative-offset table into a ``(C, L, L)`` pair table for an axis of ``length`` positions.

    Args:
        table: ``(C, 2 * span - 1)``; column ``span - 1`` is offset 0.
        length: Axis length ``L``. ``L <= span`` takes the central ``2L - 1`` columns, ``L > span`` resamples the
            table linearly to ``2L - 1`` columns.

    Returns:
        ``(C, L, L)`` with ``out[c, i, j] = table[c, (i - j) + L - 1]`` (``i`` query, ``j`` key), the index
        convention of the official MedT code.
    """
    C, M = table.shape
    span = (M + 1) // 2
    if length <= span:
        table = table[:, span - length: span + length - 1]  # (C, 2L-1)
    else:
        table = F.interpolate(table[None], size=2 * length - 1, mode="linear", align_corners=True)[0]  # (C, 2L-1)
    pos = torch.arange(length, device=table.device)
    index = pos[:, None] - pos[None, :] + length - 1  # (L, L): i - j + L - 1
    return table[:, index]  # (C, L, L)


class AxialAttention(nn.Module):
    """Multi-head attention along the height or the width of a ``(B, C, H, W)`` map.

    Per head, the ``2 * out_dim / num_heads`` projected channels split into q and k (a quarter each) and v (half),
    as in Axial-DeepLab and MedT.

    Args:
        dim: Input channels.
        out_dim: Output channels (default ``dim``); ``out_dim / num_heads`` must be even.
        num_heads: Heads (MedT's ``groups``).
        axis: ``"height"`` or ``"width"``.
        span: Length of the relative tables (MedT's ``kernel_size``): the axis length the layer is built for.
            Required when ``rel_pos``.
        stride: Average-pool both axes by this factor after attention (MedT's strided width block).
        rel_pos: Use relative encodings for q, k and v (``False`` is MedT's ``AxialAttention_wopos``).
        gated: Learnable gates on the relative terms (MedT's gated axial attention); needs ``rel_pos``.
        gate_init: Initial (G_Q, G_K, G_V2, G_V1).
        attn_drop: Attention dropout.
        norm_layer: 2D norm class applied to the qkv projection, the output (and, ``"official"``, the logits).
        variant: ``"eq2"`` (default) or ``"official"`` (see the module docstring).

    Example::

        >>> attn = AxialAttention(16, num_heads=8, axis="height", span=32)
        >>> attn(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 16, 32, 32])
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None, num_heads: int = 8, axis: str = "height",
                 span: Optional[int] = None, stride: int = 1, rel_pos: bool = True, gated: bool = True,
                 gate_init: Sequence[float] = GATE_INIT, attn_drop: float = 0.0,
                 norm_layer: Type[nn.Module] = nn.BatchNorm2d, variant: str = "eq2") -> None:
        super().__init__()
        out_dim = out_dim or dim
        self._check_args(dim, out_dim, num_heads, axis, span, stride, rel_pos, gated, gate_init)
        self.variant = check_choice("variant", variant, VARIANTS, error=ValueError)
        self.out_dim, self.num_heads, self.axis, self.stride = out_dim, num_heads, axis, stride
        self.head_dim = out_dim // num_heads  # v width per head; q and k have head_dim // 2
        self.span = span
        self.attn_drop = attn_drop
        self.qkv = nn.Conv2d(dim, out_dim * 2, kernel_size=1, bias=False)
        self.norm_qkv = norm_layer(out_dim * 2)
        self.relative = nn.Parameter(torch.empty(self.head_dim * 2, 2 * span - 1)) if rel_pos else None
        if gated:
            self.f_qr, self.f_kr, self.f_sve, self.f_sv = (nn.Parameter(torch.tensor(float(g))) for g in gate_init)
        else:
            self.f_qr = self.f_kr = self.f_sve = self.f_sv = None
        official = variant == "official"
        # official: one norm per logit term (q.k [, q.r^q, k.r^k]) and per output term (P v [, P r^v])
        self.norm_logits = norm_layer(num_heads * (3 if rel_pos else 1)) if official else None
        self.norm_out = norm_layer(out_dim * (2 if official and rel_pos else 1))
        self.pool = nn.AvgPool2d(stride, stride=stride) if stride > 1 else nn.Identity()
        self.reset_parameters(dim)

    @staticmethod
    def _check_args(dim: int, out_dim: int, num_heads: int, axis: str, span: Optional[int], stride: int,
                    rel_pos: bool, gated: bool, gate_init: Sequence[float]) -> None:
        if out_dim % num_heads or (out_dim // num_heads) % 2:
            raise ValueError(f"out_dim {out_dim} must be divisible by num_heads {num_heads} with an even head width")
        if axis not in ("height", "width"):
            raise ValueError(f"axis must be 'height' or 'width', got {axis!r}")
        if rel_pos and (span is None or span < 1):
            raise ValueError(f"rel_pos needs a positive span (the axis length), got span={span}")
        if gated and not rel_pos:
            raise ValueError("gated=True needs rel_pos=True: the gates act on the relative terms")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if len(gate_init) != 4:
            raise ValueError(f"gate_init needs 4 values (G_Q, G_K, G_V2, G_V1), got {tuple(gate_init)}")

    def reset_parameters(self, dim: int) -> None:
        """Official MedT init: qkv ~ N(0, 1/dim), relative tables ~ N(0, 1/head_dim)."""
        nn.init.normal_(self.qkv.weight, 0.0, dim ** -0.5)
        if self.relative is not None:
            nn.init.normal_(self.relative, 0.0, self.head_dim ** -0.5)

    def _to_rows(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B*W, heads, H, C/heads)`` for height (``(B*H, heads, W, .)`` for width)."""
        B, C, H, W = t.shape
        t = t.permute(0, 3, 2, 1) if self.axis == "height" else t.permute(0, 2, 3, 1)  # (B, W, H, C) | (B, H, W, C)
        L = t.shape[2]
        return t.reshape(-1, L, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B*W, g, L, C/g)

    def _from_rows(self, t: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
        """Inverse of :meth:`_to_rows` for ``(B*W, heads, H, d)`` -> ``(B, heads*d, H, W)``."""
        R, g, L, d = t.shape
        t = t.transpose(1, 2).reshape(B, R // B, L, g * d)  # (B, W, H, C) | (B, H, W, C)
        return t.permute(0, 3, 2, 1) if self.axis == "height" else t.permute(0, 3, 1, 2)  # (B, C, H, W)

    def _rel_bias(self, q: torch.Tensor, k: torch.Tensor, rq: torch.Tensor, rk: torch.Tensor) -> torch.Tensor:
        """Gated relative logits ``G_Q q_i.r^q_(i,j) + G_K k_j.r^k_(j,i)``, ``(R, g, L, L)``, pre-scaled."""
        scale = q.shape[-1] ** -0.5  # SDPA scales q.k by 1/sqrt(d); scale the bias the same way
        if self.f_qr is not None:  # fold gates and scale into the small (c, L, L) tables, not the (R, g, L, L) logits
            rq, rk = rq * (self.f_qr * scale), rk * (self.f_kr * scale)
        else:
            rq, rk = rq * scale, rk * scale
        qr = torch.einsum("rgic,cij->rgij", q, rq)  # (R, g, L, L)
        return qr + torch.einsum("rgjc,cji->rgij", k, rk)  # (R, g, L, L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, out_dim, H / stride, W / stride)``."""
        B, _, H, W = x.shape
        dq = self.head_dim // 2
        qkv = self._to_rows(self.norm_qkv(self.qkv(x)))  # (R, g, L, 2*head_dim)
        q, k, v = qkv.split([dq, dq, self.head_dim], dim=-1)  # (R, g, L, dq|dq|dv)
        tables = None
        if self.relative is not None:
            tables = relative_table(self.relative, q.shape[2]).split([dq, dq, self.head_dim], dim=0)  # (c, L, L)
        if self.variant == "official":
            return self.pool(self._official(q, k, v, tables, B, H, W))
        drop = self.attn_drop if self.training else 0.0
        if tables is None:
            out = sdpa(q, k, v, dropout_p=drop)  # (R, g, L, dv)
        else:
            rq, rk, rv = tables
            L = q.shape[2]
            eye = torch.eye(L, dtype=v.dtype, device=v.device).expand(*v.shape[:2], L, L)  # (R, g, L, L)
            out = sdpa(q, k, torch.cat([v, eye], dim=-1), self._rel_bias(q, k, rq, rk), dropout_p=drop)
            out, probs = out.split([self.head_dim, L], dim=-1)  # (R, g, L, dv), attention probabilities (R, g, L, L)
            if self.f_sv is not None:
                out, rv = out * self.f_sv, rv * self.f_sve
            out = out + torch.einsum("rgij,cij->rgic", probs, rv)  # (R, g, L, dv)
        out = self.norm_out(self._from_rows(out, B, H, W))  # (B, out_dim, H, W)
        return self.pool(out)

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        return F.dropout(probs, self.attn_drop) if self.training and self.attn_drop > 0 else probs

    def _official(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  tables: Optional[Sequence[torch.Tensor]], B: int, H: int, W: int) -> torch.Tensor:
        """The official MedT attention (unscaled logits, a norm per logit term and per output term) on rows
        ``(R, g, L, d)`` -> ``(B, out_dim, H, W)`` before pooling."""
        R, g, L, _ = q.shape
        logits = q @ k.transpose(-1, -2)  # (R, g, L, L): q_i . k_j
        if tables is None:  # official AxialAttention_wopos
            probs = self._softmax(self.norm_logits(logits))  # (R, g, L, L)
            return self.norm_out(self._from_rows(probs @ v, B, H, W))  # (B, out_dim, H, W)
        rq, rk, rv = tables
        qr = torch.einsum("rgic,cij->rgij", q, rq)  # (R, g, L, L)
        kr = torch.einsum("rgjc,cji->rgij", k, rk)  # (R, g, L, L)
        if self.f_qr is not None:
            qr, kr = qr * self.f_qr, kr * self.f_kr
        logits = self.norm_logits(torch.cat([logits, qr, kr], dim=1)).view(R, 3, g, L, L).sum(1)  # (R, g, L, L)
        probs = self._softmax(logits)
        sv = probs @ v  # (R, g, L, dv)
        sve = torch.einsum("rgij,cij->rgic", probs, rv)  # (R, g, L, dv)
        if self.f_sv is not None:
            sv, sve = sv * self.f_sv, sve * self.f_sve
        both = torch.stack([sv, sve], dim=-1).flatten(-2)  # (R, g, L, 2*dv): channel 2c + term
        out = self.norm_out(self._from_rows(both, B, H, W))  # (B, 2*out_dim, H, W)
        return out.view(B, self.out_dim, 2, H, W).sum(2)  # (B, out_dim, H, W)

    def extra_repr(self) -> str:
        return (f"axis={self.axis}, heads={self.num_heads}, span={self.span}, stride={self.stride}, "
                f"variant={self.variant}")
