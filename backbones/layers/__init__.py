"""Primitives shared by every vtk model, one file per primitive."""

from backbones.layers.attention import Attention, sdpa
from backbones.layers.block import Block
from backbones.layers.drop import DropPath, LayerScale, drop_path
from backbones.layers.mlp import Mlp
from backbones.layers.patch_embed import PatchEmbed, TubeletEmbed, inflate_conv2d_weight, to_ntuple
from backbones.layers.pos_embed import grid_shape, resample_pos_embed, resample_time_embed, sincos_1d, sincos_nd

__all__ = [
    "Attention", "sdpa", "Block", "DropPath", "LayerScale", "drop_path", "Mlp", "PatchEmbed", "TubeletEmbed",
    "inflate_conv2d_weight", "to_ntuple", "grid_shape", "resample_pos_embed", "resample_time_embed", "sincos_1d",
    "sincos_nd",
]
