"""What TimeSformer and ViViT model 1/3/4 share: one token sequence run through ``blk(x, thw)`` blocks.

Both embed a clip into ``(B, P + T*N, D)`` tokens (``P`` prefix tokens, 0 or 1) and differ only in their blocks,
their embedding and how block outputs become the clip's tokens (TimeSformer's ``space_only`` averages per-frame
class tokens). :class:`VideoTokenMixin` holds the rest once: the block loop, the head and
``forward_intermediates`` for dense decoders, timm-style.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence, Tuple, Union

import torch

from backbones._builder import checkpoint_module, take_indices

__all__ = ["VideoTokenMixin", "check_choice", "tokens_to_map"]

Thw = Tuple[int, int, int]


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise a ``ValueError`` that suggests close names."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}{hint}")
    return value


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
                              norm: bool = False, output_fmt: str = "NCTHW", intermediates_only: bool = True,
                              return_prefix_tokens: bool = False) -> Any:
        """Outputs of selected blocks.

        Args:
            x: Video ``(B, C, T, H, W)``.
            indices: Int ``n`` for the last ``n`` blocks, or a list of block indices.
            norm: Apply the final norm to every intermediate.
            output_fmt: ``"NCTHW"`` feature maps ``(B, D, T', H', W')`` (prefix tokens dropped) or ``"NLC"``
                tokens ``(B, P + T'*H'*W', D)``.
            intermediates_only: Return only the list; otherwise ``(final_features, list)``.
            return_prefix_tokens: With ``NCTHW``, return ``(map, prefix tokens (B, P, D))`` pairs.
        """
        check_choice(output_fmt, ("NCTHW", "NLC"), "output_fmt")
        take, last = take_indices(len(self.blocks), indices)
        x, thw = self._embed(x)
        P, out = self.num_prefix_tokens, []
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x, thw)
            if i in take:
                y = self._to_clip(x, thw)
                y = self.norm(y) if norm else y
                fmap = tokens_to_map(y, thw, P)
                out.append(y if output_fmt == "NLC" else (fmap, y[:, :P]) if return_prefix_tokens else fmap)
            if intermediates_only and i >= last:
                break
        return out if intermediates_only else (self.norm(self._to_clip(x, thw)), out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
