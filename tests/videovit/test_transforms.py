"""Transforms, mixup/cutmix, datasets (seeded items, multi-view items) and the pytorchvideo shim."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from videovit.data.dataset import VideoClipDataset, VideoViewDataset
from videovit.data.layouts import load_kinetics
from videovit.data.transforms import MixupCutmix, NormalizeClip, eval_transform, soft_cross_entropy, train_transform


def _frames(T=4, H=40, W=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)


def test_train_transform_same_params_for_all_frames():
    frames = np.repeat(_frames(1), 4, axis=0)  # four identical frames
    torch.manual_seed(0)
    out = train_transform(32, randaugment=(2, 9))(frames)
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0], out[:, 3])  # one crop / flip / augmentation for the whole clip


def test_eval_transform_views():
    out = eval_transform(32, num_crops=3)(_frames())
    assert out.shape == (3, 3, 4, 32, 32)
    assert not torch.allclose(out[0], out[2])  # left and right crops differ
    assert abs(float(out.mean())) < 2.0


def test_normalize_clip_matches_torchvision_v2():
    from torchvision.transforms import v2

    mean, std = (0.45, 0.4, 0.35), (0.225, 0.25, 0.2)
    video = torch.from_numpy(_frames(T=3)).permute(0, 3, 1, 2)[..., 5:37, 3:35]  # channels-last crop (T, C, h, w)
    ref = v2.Normalize(list(mean), list(std))(v2.ToDtype(torch.float32, scale=True)(video)).permute(1, 0, 2, 3)
    out = NormalizeClip(mean, std)(video)
    assert out.shape == (3, 3, 32, 32) and out.is_contiguous()
    assert torch.allclose(out, ref, atol=1e-5)
    assert out.data_ptr() != video.data_ptr() and video.dtype == torch.uint8  # the input is left alone
    with pytest.raises(ValueError, match="expected a video"):
        NormalizeClip(mean, std)(video[0])
    with pytest.raises(ValueError, match="std"):
        NormalizeClip(mean, (0.2, 0.0, 0.2))


def test_mixup_and_cutmix_soft_targets():
    torch.manual_seed(0)
    clips, labels = torch.randn(4, 3, 2, 16, 16), torch.tensor([0, 1, 2, 3])
    for mix, cut in ((1.0, 0.0), (0.0, 1.0)):
        mixed, targets = MixupCutmix(4, mix, cut, label_smoothing=0.0)(clips, labels)
        assert mixed.shape == clips.shape and torch.allclose(targets.sum(1), torch.ones(4))
        assert torch.allclose(targets, targets.flip(0).flip(1))  # sample i mixes with sample B-1-i
        lam = float(targets[0, 0])
        if cut:  # the pasted box is identical in every frame
            pasted = (mixed != clips).any(1)  # (B, T, H, W)
            assert torch.equal(pasted[:, 0], pasted[:, 1])
            assert abs(float(pasted[0, 0].float().mean()) - (1 - lam)) < 1e-6
        else:
            assert torch.allclose(mixed[0], lam * clips[0] + (1 - lam) * clips[3], atol=1e-6)
    loss = soft_cross_entropy(torch.zeros(4, 4), targets)
    assert abs(float(loss) - np.log(4)) < 1e-5
    with pytest.raises(ValueError, match="mixup_alpha"):
        MixupCutmix(4, mixup_alpha=-1)


def test_train_items_seeded_by_epoch_and_index(synth_k400):
    ds = VideoClipDataset(load_kinetics(synth_k400), 4, 2, train_transform(32, hflip=False), seed=3)
    a, ya = ds[5]
    b, _ = ds[5]
    assert torch.equal(a, b) and a.shape == (3, 4, 32, 32) and ya == 1
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], a)
    ds.set_epoch(0)
    ds.set_random_state(4)
    assert not torch.equal(ds[5][0], a)


def test_view_items_hold_all_views(synth_k400):
    ds = VideoViewDataset(load_kinetics(synth_k400, "val"), 8, 1, 32, views=(3, 2))
    views, label = ds[2]
    assert views.shape == (6, 3, 8, 32, 32) and label == 2
    assert not torch.equal(views[0], views[4])  # first and last clip differ (the shape moves)


def test_pytorchvideo_transforms_import_with_shim():
    from videovit.compat import import_pytorchvideo_transforms, install_functional_tensor_shim

    T = import_pytorchvideo_transforms()
    assert "torchvision.transforms.functional_tensor" in sys.modules
    out = T.ShortSideScale(16)(torch.rand(3, 2, 32, 48))
    assert out.shape == (3, 2, 16, 24)
    assert install_functional_tensor_shim() is False  # idempotent
