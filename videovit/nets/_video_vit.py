"""What TimeSformer and ViViT model 1/3/4 share: one token sequence run through ``blk(x, thw)`` blocks.

Both embed a clip into ``(B, P + T*N, D)`` tokens (``P`` prefix tokens, 0 or 1) and differ only in their blocks,
their embedding and how block outputs become the clip's tokens (TimeSformer's ``space_only`` averages per-frame
class tokens). :class:`VideoTokenMixin` holds the rest once: the block loop, the head and
``forward_intermediates`` for dense decoders, timm-style.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import torch

from backbones._builder import checkpoint_module, take_indices
from engine.choices import check_choice as _check_choice

__all__ = ["VideoTokenMixin", "check_choice", "tokens_to_map"]

Thw = Tuple[int, int, int]


def check_choice(value: Any, choices: Sequence[Any], name: str) -> Any:
    """Compatibility shim (``value, choices, name`` order) for code not yet on the shared checker: delegates to
    :func:`engine.choices.check_choice` with ``error=ValueError``. New code calls that one directly."""
    return _check_choice(name, value, choices, error=ValueError)


def tokens_to_map(x: torch.Tensor, thw: Sequence[int], num_prefix_tokens: int) -> torch.Tensor:
    """``(B, P + T*H*W, C)`` tokens in ``(t, h, w)`` order -> feature map ``(B, C, T, H, W)`` (prefix dropped)."""
    B, L, C = x.shape
    return x[:, num_prefix_tokens:].transpose(1, 2).reshape(B, C, *thw)


class VideoTokenMixin:
    """Block loop, head and intermediates of a video transformer on one token sequence.

    The model provides ``blocks``, ``norm``, ``head``, ``head_drop``, ``global_pool``, ``num_prefix_tokens``,
    ``grad_checkpointing`` and ``_embed(x) -> (tokens (B, P + T*N, D), thw)``; ``_to_clip(x, thw)`` may rewrite
    block outputs into the clip's tokens (identity by default).
    """

    def _to_clip(self, x: torch.Tensor, thw: Thw) -> torch.Tensor:
        return x

    def _run_block(self, blk: torch.nn.Module, x: torch.Tensor, thw: Thw) -> torch.Tensor:
        return checkpoint_module(blk, x, thw, enabled=self.grad_checkpointing)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> normalised tokens ``(B, P + T'*N, D)``, prefix tokens first."""
        x, thw = self._embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x, thw)
        return self.norm(self._to_clip(x, thw))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> class token (or mean) -> dropout -> head; ``pre_logits`` stops before the head."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, D)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Union[int, Sequence[int], None] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCTHW", intermediates_only: bool = False) -> Any:
        """Outputs of selected blocks; timm's signature and semantics.

        Args:
            x: Video ``(B, C, T, H, W)``.
            indices: ``None`` = every block, int ``n`` = the last ``n`` blocks, or a list of block indices
                (negative from the end).
            return_prefix_tokens: Return ``(features, prefix tokens (B, P, D))`` pairs.
            norm: Apply the final norm to every intermediate.
            stop_early: Skip the blocks after the last requested one (with ``intermediates_only`` only).
            output_fmt: ``"NCTHW"`` feature maps ``(B, D, T', H', W')`` or ``"NLC"`` grid tokens
                ``(B, T'*H'*W', D)``; prefix tokens are left out of both (see ``return_prefix_tokens``).
            intermediates_only: Return only the list.

        Returns:
            The list, or ``(final, list)`` with ``final`` the output of :meth:`forward_features`, so
            ``forward_head(final) == forward(x)``.
        """
        _check_choice("output_fmt", output_fmt, ("NCTHW", "NLC"), error=ValueError)
        take, last = take_indices(len(self.blocks), indices)
        x, thw = self._embed(x)
        out = []
        for i, blk in enumerate(self.blocks[:last + 1] if stop_early and intermediates_only else self.blocks):
            x = self._run_block(blk, x, thw)
            if i in take:
                out.append(self._format_tokens(self._to_clip(x, thw), thw, output_fmt, norm, return_prefix_tokens))
        return out if intermediates_only else (self.norm(self._to_clip(x, thw)), out)

    def _format_tokens(self, y: torch.Tensor, thw: Thw, output_fmt: str, norm: bool,
                       return_prefix_tokens: bool) -> Any:
        """Clip tokens ``(B, P + T'*N, D)`` -> ``(B, T'*N, D)`` or ``(B, D, T', H', W')`` [with ``(B, P, D)``]."""
        y = self.norm(y) if norm else y
        P = self.num_prefix_tokens
        feat = y[:, P:] if output_fmt == "NLC" else tokens_to_map(y, thw, P)
        return (feat, y[:, :P]) if return_prefix_tokens else feat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
