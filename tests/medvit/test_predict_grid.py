"""Masks land in the input's own grid: non-RAS axis order, flips, anisotropic spacing, LPS-like origin."""

import nibabel as nib
import numpy as np
import torch
from torch import nn

from medvit.inference import predict_volume
from medvit.io import NiftiVolume, read_nifti, write_nifti


class IntensityClassifier(nn.Module):
    """Labels each voxel by its scaled intensity: ~0 -> 0, ~0.5 -> 2, ~1 -> 1 (position-independent)."""

    spatial_dims = 3

    def __init__(self, centres=(0.0, 1.0, 0.5)):
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres).view(1, -1, 1, 1, 1))

    def forward(self, x):  # (B, 1, D, H, W) -> (B, K, D, H, W)
        return -100.0 * (x - self.centres) ** 2


def _non_ras_case():
    """Voxel axes (S, L, A) with flips, spacing (3.0, 0.8, 1.2) mm, origin far from 0 like DICOM CT."""
    affine = np.array([[0.0, -0.8, 0.0, 40.0],
                       [0.0, 0.0, 1.2, -60.0],
                       [-3.0, 0.0, 0.0, 70.0],
                       [0.0, 0.0, 0.0, 1.0]])
    shape = (20, 60, 44)
    ijk = np.indices(shape).reshape(3, -1).astype(np.float64)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:]).T.reshape(*shape, 3)
    centres = {1: np.array([10.0, -40.0, 35.0]), 2: np.array([-5.0, -25.0, 25.0])}  # asymmetric in x, y, z
    label = np.zeros(shape, np.uint8)
    for c, w in centres.items():
        label[np.linalg.norm(world - w, axis=-1) < 9.0] = c
    # class 2 is as bright as class 1 in the resampled test (no partial-volume ring of 0.5 around blob 1)
    image = np.where(label == 1, 1000.0, np.where(label == 2, 500.0, 0.0)).astype(np.float32)
    return image, label, affine, world, centres


def _kw(spacing, roi=(16, 16, 16)):
    return dict(spatial_dims=3, spacing=spacing, a_min=0.0, a_max=1000.0, roi=roi, device=torch.device("cpu"),
                sw_batch_size=2, overlap=0.25)


def test_reorientation_only_is_exact():
    image, label, affine, _, _ = _non_ras_case()
    vol = NiftiVolume(None, image, affine, None)
    ras_spacing = (0.8, 1.2, 3.0)  # R-L, A-P, S-I axes: the network grid equals the input grid, permuted
    mask = predict_volume(IntensityClassifier(), vol, **_kw(ras_spacing))
    assert mask.shape == label.shape
    np.testing.assert_array_equal(mask, label)


def test_resampled_prediction_lands_at_the_same_world_coordinates(tmp_path):
    image, label, affine, world, centres = _non_ras_case()
    image[label == 2] = 1000.0
    label[label == 2] = 1  # two blobs of one class: each must land at its own world position
    src = write_nifti(tmp_path / "ct.nii.gz", image, affine)
    vol = read_nifti(src)
    mask = predict_volume(IntensityClassifier((0.0, 1.0)), vol, **_kw((1.5, 1.5, 1.5)))
    out = write_nifti(tmp_path / "ct_seg.nii.gz", mask, vol.affine, vol.header)
    written = nib.load(str(out))
    assert written.shape == image.shape and np.allclose(written.affine, affine)
    assert set(np.unique(mask)) == {0, 1}
    inter = np.logical_and(mask == 1, label == 1).sum()
    assert 2 * inter / ((mask == 1).sum() + (label == 1).sum()) > 0.9
    for k, w in enumerate(centres.values()):  # per blob: centroid of the mask vs centroid of the true label
        got, want = (_blob_centroid(world[m == 1], list(centres.values()), k) for m in (mask, label))
        assert np.linalg.norm(got - want) < 0.5, (got, want)


def _blob_centroid(pts, centres, k):
    near = [np.linalg.norm(pts - w, axis=1) for w in centres]
    return pts[near[k] <= near[1 - k]].mean(0)
