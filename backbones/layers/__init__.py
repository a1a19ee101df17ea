"""Primitives shared by every vtk model, one file per primitive.

| file | primitive |
|---|---|
| ``attention.py`` | fused-qkv multi-head attention through SDPA (additive bias, boolean mask) |
| ``block.py`` | pre-norm transformer block with injected attention / MLP / norm classes |
| ``linear.py`` | ``nn.Linear`` with a faster CPU bf16 training backward (same values) |
| ``mlp.py``, ``drop.py`` | MLP, DropPath, LayerScale |
| ``patch_embed.py`` | 2D/3D patch embedding, tubelet embedding and its 2D -> 3D inflation |
| ``pos_embed.py`` | sin-cos tables in 1D/2D/3D, resampling learned tables in space and time |
| ``window_attention.py`` | Swin (shifted) window attention with relative-position bias, 2D and 3D |
| ``axial_attention.py`` | MedT gated axial attention |
| ``divided_st_attention.py`` | TimeSformer divided space-time block (and joint space-time) |
| ``factorized_attention.py`` | ViViT factorised self-attention and factorised dot-product |
| ``pooling_attention.py`` | MViT pooling attention and multiscale block |
| ``local_global_attention.py`` | Longformer-style local window + global-token attention (VTN) |
| ``std_conv.py`` | weight-standardised conv + GroupNorm of the BiT ResNetV2 (R50+ViT) |
"""

from backbones.layers.attention import Attention, sdpa
from backbones.layers.axial_attention import AxialAttention
from backbones.layers.block import Block
from backbones.layers.divided_st_attention import DividedSpaceTimeBlock, SpaceTimeBlock
from backbones.layers.drop import DropPath, LayerScale, drop_path
from backbones.layers.factorized_attention import (FactorisedDotProductAttention, FactorisedDotProductBlock,
                                                   FactorisedSelfAttentionBlock)
from backbones.layers.local_global_attention import LocalGlobalAttention, LocalGlobalBlock, LocalGlobalEncoder
from backbones.layers.linear import Linear, linear
from backbones.layers.mlp import Mlp
from backbones.layers.patch_embed import PatchEmbed, TubeletEmbed, inflate_conv2d_weight, to_ntuple
from backbones.layers.pooling_attention import MultiScaleAttention, MultiScaleBlock
from backbones.layers.pos_embed import grid_shape, resample_pos_embed, resample_time_embed, sincos_1d, sincos_nd
from backbones.layers.std_conv import GroupNormAct, StdConv2dSame
from backbones.layers.window_attention import WindowAttention

__all__ = [
    "Attention", "sdpa", "AxialAttention", "Block", "DividedSpaceTimeBlock", "SpaceTimeBlock", "DropPath",
    "LayerScale", "drop_path", "FactorisedDotProductAttention", "FactorisedDotProductBlock",
    "FactorisedSelfAttentionBlock", "LocalGlobalAttention", "LocalGlobalBlock", "LocalGlobalEncoder", "Linear",
    "linear", "Mlp",
    "PatchEmbed", "TubeletEmbed", "inflate_conv2d_weight", "to_ntuple", "MultiScaleAttention", "MultiScaleBlock",
    "grid_shape", "resample_pos_embed", "resample_time_embed", "sincos_1d", "sincos_nd", "GroupNormAct",
    "StdConv2dSame", "WindowAttention",
]
