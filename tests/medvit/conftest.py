"""Shared fixtures: tiny stand-in models in medvit's registry (for one test at a time), and a tiny synthetic BTCV
folder."""

from __future__ import annotations

from typing import Iterator

import pytest
from torch import nn

import medvit
from vtk_testing import registered


class TinySeg3d(nn.Module):
    """Two 3x3x3 convolutions; a stand-in with the medvit model surface (``spatial_dims``)."""

    spatial_dims = 3

    def __init__(self, in_chans: int = 1, num_classes: int = 2, img_size=32, hidden: int = 8, **_):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(in_chans, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv3d(hidden, num_classes, 3, padding=1))

    def forward(self, x):
        return self.net(x)


class TinySeg2d(nn.Module):
    spatial_dims = 2

    def __init__(self, in_chans: int = 1, num_classes: int = 2, img_size=32, hidden: int = 8, **_):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_chans, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, num_classes, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def tiny_seg3d(pretrained=None, **kw):
    return TinySeg3d(**kw)


def tiny_seg2d(pretrained=None, **kw):
    return TinySeg2d(**kw)


@pytest.fixture
def tiny_seg_models() -> Iterator[None]:
    """``tiny_seg3d`` and ``tiny_seg2d`` in medvit's registry for one test; unregistered after it, even if it fails."""
    with registered(medvit.registry, tiny_seg3d, meta=dict(spatial_dims=3)), \
            registered(medvit.registry, tiny_seg2d, meta=dict(spatial_dims=2)):
        yield


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A 4-case synthetic BTCV folder (32 x 32 in-plane), written once per session."""
    from medvit.data.synth import synth_btcv

    root = tmp_path_factory.mktemp("btcv")
    synth_btcv(root, cases=4, size=32, seed=0, test_cases=1)
    return root
