"""Factorised video encoder: a spatial encoder on every frame (or tubelet), then a temporal encoder over time.

Three 2021 video transformers share this pattern; each is a thin composition of :class:`FactorisedVideoEncoder`
with its own spatial and temporal encoders passed in:

* STAM (Sharir, Noy and Zelnik-Manor, arXiv:2103.13915): ViT per frame -> ``nn.TransformerEncoder`` with its
  own class token and position table (:mod:`videovit.nets.stam`);
* ViViT model 2, factorised encoder (Arnab et al., arXiv:2103.15691): ViT on each temporal index's tubelets ->
  ViT blocks over the per-index class tokens (:mod:`videovit.nets.vivit`);
* VTN (Neimark, Bar, Zohar and Asselmann, arXiv:2102.00719): ViT per frame -> Longformer encoder
  (:mod:`videovit.nets.vtn`).

Dataflow::

    video (B, C, T, H, W)
      -> fold time into the batch: frames (B*T, C, H, W), or tubelet clips (B*T', C, t, H, W) with T' = T // t
      -> spatial.forward_features -> spatial.pool, in chunks of frame_chunk_size       (B*T', D)
      -> unfold                                                                          (B, T', D)
      -> [temporal_cls_token; .] + temporal_pos_embed (both optional) -> temporal_embed  (B, P + T', D)
      -> temporal encoder -> temporal_norm                                               (B, L, D)
      -> pool: token 0 ("token") or the mean after the P prefix tokens ("avg")          (B, D)
      -> head_drop -> head                                                               (B, num_classes)

Key names: the spatial encoder is *flattened* into the model. Its parameters, buffers and submodules are the
model's own (the two modules share one registry), so a ViT's keys (``cls_token``, ``patch_embed.*``,
``blocks.*``, ``norm.*``) sit at the top level, exactly as an image checkpoint stores them, and the
spatial encoder's own methods (``forward_features``, ``forward_intermediates``, ``adapt_state_dict``) keep
working on them. The temporal encoder, the optional ``temporal_embed``/``temporal_norm`` and the head are
children under names the composition picks (STAM ``aggregate``, VTN ``temporal_encoder`` and ``mlp_head``,
ViViT ``temporal_blocks``), which keeps every released checkpoint's key names.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from backbones._builder import checkpoint_module
from backbones.layers import resample_time_embed
from backbones.models.vit import init_vit_weights
from engine.choices import check_choice

__all__ = ["FactorisedVideoEncoder", "TemporalBlocks", "fit_time_table"]

_REGISTRIES = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")


def fit_time_table(pos: torch.Tensor, num_steps: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """A learned temporal table ``(1, P + T0, D)`` -> ``(1, P + num_steps, D)``.

    The ``P`` prefix rows (a class token's) are kept; the time rows are resampled linearly when ``T0`` differs.
    """
    P = num_prefix_tokens
    if pos.shape[1] == P + num_steps:
        return pos
    return torch.cat([pos[:, :P], resample_time_embed(pos[:, P:], num_steps)], dim=1)


class TemporalBlocks(nn.Sequential):
    """A stack of ``(B, L, D) -> (B, L, D)`` blocks run in order, each optionally under gradient checkpointing.

    The temporal encoder of ViViT's factorised encoder (timm ViT blocks over the per-index class tokens); keys are
    ``<name>.<i>.*`` like timm's ``blocks``.
    """

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` -> ``(B, L, D)``."""
        for blk in self:
            x = checkpoint_module(blk, x, enabled=self.grad_checkpointing)
        return x


class FactorisedVideoEncoder(nn.Module):
    """Spatial encoder per frame or tubelet, then a temporal encoder over time (input ``(B, C, T, H, W)``).

    The spatial encoder is any module with ``forward_features(x) -> (b, L, D)`` tokens and ``pool(tokens) ->
    (b, D)`` (the backbones/timm ``VisionTransformer``: its class token), or a module whose call returns ``(b, D)``
    directly. :meth:`forward_intermediates` needs the backbones ViT's ``forward_intermediates(x, indices, norm=,
    return_prefix_tokens=True, stop_early=, return_final=True)``; ``set_grad_checkpointing``,
    ``no_weight_decay``, ``adapt_state_dict``, ``pretrained_cfg`` and ``pretrained_ignore_keys`` are used when
    present. Its parameters become this module's own (see the module docstring): build it without a classifier
    of its own, or pass its ``head`` as ``head``.

    The temporal encoder is any module over ``(B, L, D)``; a ``set_grad_checkpointing`` method or a
    ``grad_checkpointing`` attribute on it is switched by :meth:`set_grad_checkpointing`.

    Args:
        spatial: Spatial encoder, applied to ``(b, C, H, W)`` frames, or ``(b, C, t, H, W)`` tubelet clips when
            ``tubelet_size`` is set.
        temporal: Temporal encoder, registered as ``temporal_name``.
        num_frames: Frames per clip ``T``; the temporal position table has ``T // tubelet_size`` time rows.
        num_classes: Classes of the default head (0: ``forward`` returns the pooled features).
        embed_dim: Width ``D`` (default ``spatial.embed_dim``).
        temporal_name: Attribute (and key prefix) of the temporal encoder.
        tubelet_size: ``None`` folds frames; ``t`` folds clips of ``t`` frames (trailing ``T % t`` frames are
            dropped, as a strided tubelet convolution does).
        class_token: Prepend a learned ``temporal_cls_token`` ``(1, 1, D)`` to the temporal sequence.
        pos_embed: Add a learned ``temporal_pos_embed`` ``(1, P + T', D)`` (resampled linearly for other ``T'``).
        temporal_embed: Module applied to the sequence after the class token and table (VTN: position and
            token-type embeddings + LayerNorm); default identity.
        temporal_norm: Norm after the temporal encoder; default identity.
        head: Classifier on the pooled ``(B, D)`` features, registered as ``head_name``; default
            ``Linear(D, num_classes)`` (timm init) or identity. An ``nn.Sequential`` head is an MLP head:
            ``pre_logits`` returns the input of its last layer.
        head_name: Attribute (and key prefix) of the head.
        global_pool: ``"token"`` (token 0 of the temporal output: a class token, whoever prepended it) or
            ``"avg"`` (mean of the tokens after this module's class token).
        drop_rate: Dropout before the head.
        frame_chunk_size: Frames (or clips) per spatial pass; bounds activation memory for long videos.
        eval_chunk_size: Chunk used when ``frame_chunk_size`` is ``None`` and gradients are off (whole-video
            evaluation); ``None``: one pass.
    """

    def __init__(self, spatial: nn.Module, temporal: nn.Module, *, num_frames: int, num_classes: int = 0,
                 embed_dim: Optional[int] = None, temporal_name: str = "temporal", tubelet_size: Optional[int] = None,
                 class_token: bool = False, pos_embed: bool = False, temporal_embed: Optional[nn.Module] = None,
                 temporal_norm: Optional[nn.Module] = None, head: Optional[nn.Module] = None,
                 head_name: str = "head", global_pool: str = "token", drop_rate: float = 0.0,
                 frame_chunk_size: Optional[int] = None, eval_chunk_size: Optional[int] = None) -> None:
        super().__init__()
        self.check_frames(num_frames, frame_chunk_size, tubelet_size)
        self.global_pool = check_choice("global_pool", global_pool, ("token", "avg"), error=ValueError)
        self._adopt(spatial)
        D = embed_dim or spatial.embed_dim
        self.num_features = self.embed_dim = D
        self.num_frames, self.tubelet_size, self.num_classes = num_frames, tubelet_size, num_classes
        self.frame_chunk_size, self.eval_chunk_size = frame_chunk_size, eval_chunk_size
        self.temporal_name, self.head_name = temporal_name, head_name
        self.num_prefix_tokens = 1 if class_token else 0
        self.grad_checkpointing = False
        steps = num_frames // (tubelet_size or 1)
        self._put("temporal_cls_token", nn.Parameter(torch.zeros(1, 1, D)) if class_token else None)
        self._put("temporal_pos_embed",
                  nn.Parameter(torch.zeros(1, self.num_prefix_tokens + steps, D)) if pos_embed else None)
        for p in (self.temporal_cls_token, self.temporal_pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self._put("temporal_embed", temporal_embed or nn.Identity())
        self._put(temporal_name, temporal)
        self._put("temporal_norm", temporal_norm or nn.Identity())
        self._put("head_drop", nn.Dropout(drop_rate))
        if head is None:
            head = nn.Linear(D, num_classes) if num_classes > 0 else nn.Identity()
            head.apply(init_vit_weights)
        self._put(head_name, head)
        in_chans = getattr(spatial, "pretrained_cfg", {}).get("input_size", (3,))[0]
        self.pretrained_cfg = dict(getattr(spatial, "pretrained_cfg", {}), num_frames=num_frames)
        img = getattr(spatial, "img_size", None)
        if img is not None:
            self.pretrained_cfg["input_size"] = (in_chans, num_frames) + tuple(img)
        self.pretrained_ignore_keys = tuple(getattr(spatial, "pretrained_ignore_keys", ()))

    # ------------------------------------------------------------------------------------------ construction
    @staticmethod
    def check_frames(num_frames: int, frame_chunk_size: Optional[int] = None,
                     tubelet_size: Optional[int] = None) -> None:
        """Raise ``ValueError`` unless ``num_frames``, ``frame_chunk_size`` and ``tubelet_size`` are >= 1."""
        if num_frames < 1 or any(v is not None and v < 1 for v in (frame_chunk_size, tubelet_size)):
            raise ValueError(f"num_frames ({num_frames}), frame_chunk_size ({frame_chunk_size}) and tubelet_size "
                             f"({tubelet_size}) must be >= 1")

    def _adopt(self, spatial: nn.Module) -> None:
        """Share ``spatial``'s registries: its parameters, buffers and submodules become this module's own."""
        for reg in _REGISTRIES:
            object.__setattr__(self, reg, getattr(spatial, reg))
        object.__setattr__(self, "_spatial", spatial)  # a handle, not a child: its members are ours already

    def _put(self, name: str, value: Optional[Union[nn.Module, nn.Parameter]]) -> None:
        """Register ``value`` as ``name``; it may replace a weightless module of the spatial encoder (its
        ``Identity`` head, its dropout), never one with weights."""
        old = self._modules.get(name, self._parameters.get(name))
        if old is not None and old is not value:
            if not isinstance(old, nn.Module) or any(True for _ in old.state_dict()):
                raise ValueError(f"the spatial encoder already has {name!r} ({type(old).__name__} with weights); "
                                 f"build it without one (e.g. num_classes=0) or pass it as {name!r}")
            del self._modules[name]  # re-registered below, after the temporal parts (state-dict order)
        setattr(self, name, value)

    @property
    def spatial_encoder(self) -> nn.Module:
        """The spatial encoder (its weights are this module's top-level entries)."""
        return self._spatial

    def get_temporal_encoder(self) -> nn.Module:
        """The temporal encoder (attribute ``temporal_name``)."""
        return getattr(self, self.temporal_name)

    def get_classifier(self) -> nn.Module:
        """The head (attribute ``head_name``), as timm's ``get_classifier``."""
        return getattr(self, self.head_name)

    def train(self, mode: bool = True) -> "FactorisedVideoEncoder":
        super().train(mode)
        self._spatial.training = mode
        return self

    # ---------------------------------------------------------------------------------------------- public API
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The spatial encoder's names and this module's temporal class token and position table."""
        fn = getattr(self._spatial, "no_weight_decay", None)
        names = set(fn()) if callable(fn) else set()
        return names | {n for n in ("temporal_cls_token", "temporal_pos_embed") if getattr(self, n) is not None}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the spatial and the temporal encoder, where each supports it."""
        self.grad_checkpointing = enable
        for m in (self._spatial, self.get_temporal_encoder()):
            if callable(getattr(m, "set_grad_checkpointing", None)):
                m.set_grad_checkpointing(enable)
            elif hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable

    def adapt_state_dict(self, sd: dict) -> dict:
        """The spatial encoder's adaptation (keys are shared), then the temporal table resampled to ``T'``."""
        fn = getattr(self._spatial, "adapt_state_dict", None)
        sd = fn(sd) if callable(fn) else sd
        pos, ours = sd.get("temporal_pos_embed"), self.temporal_pos_embed
        if pos is not None and ours is not None and pos.shape[1] != ours.shape[1]:
            P = self.num_prefix_tokens
            sd["temporal_pos_embed"] = fit_time_table(pos, ours.shape[1] - P, P)
        return sd

    # ------------------------------------------------------------------------------------------------ forward
    def _fold(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """Video -> frames ``(B*T, C, H, W)`` or clips ``(B*T', C, t, H, W)``, with ``B`` and ``T'``."""
        if x.ndim != 5:
            raise ValueError(f"expected video (B, C, T, H, W), got shape {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        t = self.tubelet_size
        if t is None:
            return x.transpose(1, 2).reshape(B * T, C, H, W), B, T
        n = T // t
        if n < 1:
            raise ValueError(f"a clip of {T} frames is shorter than one tubelet ({t} frames)")
        clips = x[:, :, :n * t].reshape(B, C, n, t, H, W).transpose(1, 2)  # (B, T', C, t, H, W)
        return clips.reshape(B * n, C, t, H, W), B, n

    def _chunks(self, frames: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        n = len(frames)
        size = self.frame_chunk_size or (n if torch.is_grad_enabled() else self.eval_chunk_size or n)
        return frames.split(size)

    def _embed_frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """Spatial output -> one embedding per frame ``(b, D)``."""
        pool = getattr(self._spatial, "pool", None)
        x = pool(tokens) if callable(pool) else tokens
        if x.ndim != 2:
            raise ValueError(f"the spatial encoder gave per-frame features of shape {tuple(x.shape)}, expected (b, D)")
        return x

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Video ``(B, C, T, H, W)`` -> per-frame (or per-tubelet) embeddings ``(B, T', D)``."""
        frames, B, T = self._fold(x)
        sp = self._spatial
        run = sp.forward_features if callable(getattr(sp, "forward_features", None)) else sp
        emb = [self._embed_frames(run(f)) for f in self._chunks(frames)]  # (b, D) each
        return torch.cat(emb).reshape(B, T, -1)  # (B, T', D)

    def _add_temporal_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T', D)`` -> ``(B, P + T', D)``: the class token (if any) prepended, the table (if any) added."""
        B, T, _ = x.shape
        if self.temporal_cls_token is not None:
            x = torch.cat([self.temporal_cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + T', D)
        if self.temporal_pos_embed is not None:
            x = x + fit_time_table(self.temporal_pos_embed, T, self.num_prefix_tokens)
        return x

    def forward_temporal(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame embeddings ``(B, T', D)`` -> temporal tokens ``(B, L, D)``."""
        x = self.temporal_embed(self._add_temporal_tokens(x))  # (B, P + T', D)
        return self.temporal_norm(self.get_temporal_encoder()(x))

    def forward_features(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Video ``(B, C, T, H, W)`` -> temporal tokens ``(B, L, D)``; extra arguments go to
        :meth:`forward_temporal` (VTN: ``position_ids``, ``frame_mask``)."""
        return self.forward_temporal(self.forward_spatial(x), *args, **kwargs)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, D)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Temporal tokens ``(B, L, D)`` -> pooled -> dropout -> head; ``pre_logits`` stops before the (last layer
        of the) head."""
        x = self.head_drop(self._pool(x))  # (B, D)
        head = self.get_classifier()
        if isinstance(head, nn.Sequential) and len(head) > 1:  # MLP head: pre-logits are its hidden features
            x, head = head[:-1](x), head[-1]
        return x if pre_logits else head(x)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = self.forward_features(x, *args, **kwargs)
        return self.forward_head(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Union[None, int, Sequence[int]] = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCTHW", intermediates_only: bool = False) -> Any:
        """Outputs of selected *spatial* blocks, as video feature maps or tokens.

        Indices count the spatial encoder's blocks only: the temporal tokens have no spatial grid, and the
        final temporal tokens come back with ``intermediates_only=False``.

        Args:
            x: Video ``(B, C, T, H, W)``.
            indices: ``None`` = every spatial block, int ``n`` = the last ``n``, a sequence = those blocks
                (negative from the end), as timm's ``feature_take_indices``.
            return_prefix_tokens: Pair each entry with the per-frame prefix (class) tokens ``(B, T'*P, D)``.
            norm: Apply the spatial encoder's final norm to each intermediate.
            stop_early: With ``intermediates_only``, stop the spatial pass after the last requested block.
            output_fmt: ``"NCTHW"`` maps ``(B, D, T', h, w)`` or ``"NLC"`` grid tokens ``(B, T'*h*w, D)`` in
                ``(t, h, w)`` order; per-frame prefix tokens are left out of both.
            intermediates_only: Return only the list; otherwise ``(final temporal tokens (B, L, D), list)``, and
                ``forward_head(final)`` equals ``forward(x)``.
        """
        check_choice("output_fmt", output_fmt, ("NCTHW", "NLC"), error=ValueError)
        frames, B, T = self._fold(x)
        finals: List[torch.Tensor] = []
        parts: List[list] = []
        for f in self._chunks(frames):
            out = self._spatial.forward_intermediates(f, indices, return_prefix_tokens=True, norm=norm,
                                                      stop_early=stop_early and intermediates_only,
                                                      output_fmt="NCHW", intermediates_only=intermediates_only)
            final, inter = (None, out) if intermediates_only else out
            finals.append(final)
            parts.append(inter)  # [(map (b, D, h, w), prefix (b, P, D)), ...]
        res = [self._to_video([p[i] for p in parts], B, T, output_fmt, return_prefix_tokens)
               for i in range(len(parts[0]))]
        if intermediates_only:
            return res
        emb = torch.cat([self._embed_frames(f) for f in finals]).reshape(B, T, -1)  # (B, T', D)
        return self.forward_temporal(emb), res

    @staticmethod
    def _to_video(chunks: List[Tuple[torch.Tensor, torch.Tensor]], B: int, T: int, fmt: str,
                  with_prefix: bool) -> Any:
        maps = torch.cat([c[0] for c in chunks])  # (B*T', D, h, w)
        _, D, h, w = maps.shape
        maps = maps.reshape(B, T, D, h, w)
        if fmt == "NCTHW":
            out = maps.transpose(1, 2).contiguous()  # (B, D, T', h, w)
        else:
            out = maps.permute(0, 1, 3, 4, 2).reshape(B, T * h * w, D)  # (B, T'*h*w, D)
        if not with_prefix:
            return out
        prefix = torch.cat([c[1] for c in chunks])  # (B*T', P, D)
        return out, prefix.reshape(B, T * prefix.shape[1], D)  # (B, T'*P, D)
