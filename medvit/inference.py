"""Inference as nnU-Net does it: sliding windows (3D) or slices (2D), mirroring TTA, ensembles, masks in the input grid.

Sliding-window inference is MONAI's ``sliding_window_inference`` (overlap, gaussian blending, ``sw_batch_size``,
AMP), as in UNETR (Hatamizadeh et al., arXiv:2103.10504) and Swin-UNETR (Hatamizadeh et al., "Swin UNETR: Swin
Transformers for Semantic Segmentation of Brain Tumors in MRI Images", arXiv:2201.01740). 2D models (TransUNet,
arXiv:2102.04306; MedT, arXiv:2102.10662) predict every axial slice and the slices are restacked.

:func:`segment_volume` returns a mask (and optionally the class probabilities) in the grid of the input file
whatever its orientation, origin and spacing:

1. reorient to RAS by an exact axis permutation/flip (nibabel ``io_orientation``);
2. resample to the training spacing (trilinear, field-of-view preserving, ``align_corners=False``);
3. run every network of the ensemble, on the image and (``tta``) on each of its 2^3 (3D) or 2^2 (2D, in-plane)
   axis flips, flip each softmax back and average them all in probability space (nnU-Net's mirroring TTA and
   fold ensembling, Isensee et al., "nnU-Net", Nature Methods 2021);
4. resample the probabilities back to the RAS grid class by class with the same convention (so every voxel keeps
   its world position) and take the argmax; undo the permutation/flip.

Memory: the stitched output of the sliding window (``K`` float32 maps in the network grid, plus MONAI's count map
and, with TTA or an ensemble, a running sum) lives on the stitch device; ``stitch="auto"`` keeps it on the GPU only
when it fits in half of the free memory, else on the CPU (windows still run on the GPU).
:func:`estimate_memory` gives the peak before starting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from backbones.runtime import exported_model
from engine.choices import check_choice
from engine.io import atomic_savefig
from engine.pretrained import model_overrides
from medvit.data.transforms import from_ras, normalize_image, to_ras
from medvit.io import NiftiVolume

__all__ = ["sliding_window_probs", "slice_probs", "predict_volume", "segment_volume", "resample_to_shape",
           "autocast_for", "build_model_from_run", "save_overlay", "label_colors", "Predictor", "BLEND_MODES",
           "STITCH_MODES", "PROB_FORMATS", "predict_files", "flip_sets", "count_windows", "estimate_memory",
           "Member", "Settings", "VolumePrediction", "shard", "MemoryEstimate", "mirror_axes", "AXIS_NAMES"]

BLEND_MODES = ("gaussian", "constant")  # sliding-window blending (MONAI ``BlendMode``)
STITCH_MODES = ("auto", "device", "cpu")  # where the sliding-window output is stitched
PROB_FORMATS = ("npz", "nifti")  # --save-probabilities


def autocast_for(device: torch.device, amp: bool):
    """``--amp``: bf16 autocast on CPU, fp16 on CUDA, or a no-op; warns as ``--precision bf16`` does where the CPU
    only emulates bf16 (:func:`engine.context.emulation_note`)."""
    if not amp:
        return contextlib.nullcontext()
    from engine.context import autocast_for as autocast_precision

    return autocast_precision("16-mixed" if device.type == "cuda" else "bf16", device)


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1, in place (no second copy of a stitched volume)."""
    x = x.float()
    x.sub_(x.amax(1, keepdim=True)).exp_()
    return x.div_(x.sum(1, keepdim=True))


class _Counting:
    """Wraps a model so that every forward reports its batch of windows (``on_windows(n)``)."""

    def __init__(self, model: Callable, on_windows: Callable[[int], None]) -> None:
        self.model, self.on_windows = model, on_windows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.on_windows(int(x.shape[0]))
        return out


@torch.no_grad()
def sliding_window_probs(model: Callable, image: torch.Tensor, roi: Sequence[int], sw_batch_size: int = 4,
                         overlap: float = 0.5, mode: str = "gaussian", amp: bool = False, *,
                         device: Optional[torch.device] = None, on_windows: Optional[Callable[[int], None]] = None,
                         ) -> torch.Tensor:
    """Softmax probabilities (B, K, D, H, W) of a 3D model over ``image`` (B, C, D, H, W) by sliding windows.

    The output is stitched on ``image``'s device; windows run on ``device`` (default: the same).
    """
    from monai.inferers import sliding_window_inference

    run_on = device or image.device
    predictor = model if on_windows is None else _Counting(model, on_windows)
    with autocast_for(run_on, amp):
        logits = sliding_window_inference(image, roi_size=tuple(roi), sw_batch_size=sw_batch_size,
                                          predictor=predictor, overlap=overlap, mode=mode, sw_device=run_on,
                                          device=image.device)
    return _softmax_(torch.as_tensor(logits))


@torch.no_grad()
def slice_probs(model: Callable, stack: torch.Tensor, batch_size: int = 16, amp: bool = False, *,
                on_windows: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Softmax probabilities (Z, K, H, W) of a 2D model applied to each slice of ``stack`` (Z, C, H, W)."""
    out = []
    for i in range(0, stack.shape[0], batch_size):
        with autocast_for(stack.device, amp):
            logits = model(stack[i:i + batch_size])
        out.append(torch.softmax(torch.as_tensor(logits).float(), dim=1))
        if on_windows is not None:
            on_windows(int(out[-1].shape[0]))
    return torch.cat(out)


def resample_to_shape(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample (B, C, *spatial) to ``shape`` keeping the field of view (linear, ``align_corners=False``)."""
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(int(s) for s in shape), mode=mode, align_corners=False)


def flip_sets(dims: int, axes: Optional[Sequence[int]] = None) -> List[Tuple[int, ...]]:
    """Every subset of the mirrored axes of a (B, C, *spatial) tensor, ``()`` (no flip) first.

    Args:
        dims: Spatial dimensions.
        axes: Spatial axes to mirror (0-based: x, y, z in RAS order); all ``dims`` axes when ``None``.

    Returns:
        ``2^len(axes)`` tuples of tensor dimensions (spatial axis + 2) for ``Tensor.flip``.
    """
    axes = [a + 2 for a in (range(dims) if axes is None else axes)]
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


AXIS_NAMES = "xyz"


def mirror_axes(tta: Any, dims: int, data_args: Optional[Dict[str, Any]] = None) -> Tuple[Tuple[int, ...], str]:
    """The spatial axes mirroring TTA flips, as nnU-Net's ``allowed_mirroring_axes``, and why.

    Mirroring only helps along axes the network saw flipped in training: a run trained without flips
    (``flip_prob=0``, e.g. left/right-specific brain regions) would be averaged with a mirrored brain whose left
    and right labels are swapped. So ``True`` takes the run's training flips (all axes for a 3D run with
    ``flip_prob > 0``, for released weights and for 2D models; none for a 3D run with ``flip_prob=0``).

    Args:
        tta: ``False``/``None`` (no TTA), ``True`` (the run's flips), ``"x,z"``/``"0,2"``/``"all"``/``"none"``
            (``--tta-axes``) or a sequence of axis indices.
        dims: Spatial dimensions (3 or 2; 2D axes are the in-plane x, y).
        data_args: The run's data_args (``flip_prob``); ``None`` for weights without a run.

    Raises:
        UserError: An axis that is not one of x, y(, z).
    """
    from engine.errors import UserError

    names = AXIS_NAMES[:dims]
    if tta is None or tta is False:
        return (), "no TTA"
    if tta is True:
        flip = (data_args or {}).get("flip_prob")
        if dims == 3 and flip is not None and float(flip) == 0.0:
            return (), "TTA off: the run trained without flips (flip_prob=0); --tta-axes x,y,z forces mirroring"
        return tuple(range(dims)), f"TTA {2 ** dims} flips"
    if isinstance(tta, str):
        text = tta.strip().lower()
        if text in ("all", "none", ""):
            axes = tuple(range(dims)) if text == "all" else ()
        else:
            picked = []
            for part in (t.strip() for t in text.split(",")):
                if part in names or (part.isdigit() and int(part) < dims):
                    picked.append(names.index(part) if part in names else int(part))
                else:
                    raise UserError(f"--tta-axes: {part!r} is not one of {', '.join(names)} (or all, none)")
            axes = tuple(sorted(set(picked)))
        if not axes:
            return (), "no TTA (--tta-axes none)"
    else:
        axes = tuple(sorted({int(a) for a in tta}))
        if any(not 0 <= a < dims for a in axes):
            raise UserError(f"--tta-axes: axes {axes} must lie in 0..{dims - 1}")
        if not axes:
            return (), "no TTA"
    return axes, f"TTA {2 ** len(axes)} flips (axes {','.join(names[a] for a in axes)})"


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI visits over a volume of ``shape`` (padded up to ``roi``)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size = [max(int(s), int(r)) for s, r in zip(shape, roi)]
    roi = [min(int(r), s) for r, s in zip(roi, size)]
    interval = _get_scan_interval(size, roi, len(roi), [overlap] * len(roi))
    return len(dense_patch_slices(size, roi, interval))


@dataclasses.dataclass
class Member:
    """One network of an ensemble: any callable mapping (B, C, *roi) to logits (B, K, *roi), and its input size."""

    model: Callable
    roi: Sequence[int]
    in_chans: int = 1


@dataclasses.dataclass
class Settings:
    """How to run inference (the run's preprocessing plus the sliding-window options).

    Attributes:
        spatial_dims: 3 (sliding window) or 2 (axial slices).
        spacing: Training voxel spacing in mm (3D).
        a_min, a_max: Intensity window scaled to [0, 1].
        device: Where the networks run.
        sw_batch_size: Windows (3D) per forward; 2D models use 4x as many slices.
        overlap, mode: Sliding-window overlap and blending.
        amp: Autocast.
        tta: Mirroring test-time augmentation: the spatial axes flipped (every subset of them, averaged in
            probability space); ``True`` = all axes, ``False`` = none (see :func:`mirror_axes`).
        stitch: ``auto``, ``device`` or ``cpu``: where the sliding-window output is stitched.
        normalization, intensity_stats: The run's intensity normalisation (see
            :func:`medvit.data.transforms.normalize_image`).
    """

    spatial_dims: int
    spacing: Sequence[float]
    a_min: float
    a_max: float
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    sw_batch_size: int = 4
    overlap: float = 0.5
    mode: str = "gaussian"
    amp: bool = False
    tta: Union[bool, Tuple[int, ...]] = ()
    stitch: str = "auto"
    normalization: Optional[str] = None  # the run's data_args.normalization (None: the a_min..a_max window)
    intensity_stats: Optional[Dict[str, float]] = None  # the CT scheme's training-foreground statistics

    def __post_init__(self) -> None:
        if isinstance(self.tta, bool):
            self.tta = tuple(range(self.spatial_dims)) if self.tta else ()
        self.tta = tuple(int(a) for a in self.tta)

    @property
    def passes(self) -> int:
        """Forward passes per member: 2^(mirrored axes)."""
        return 2 ** len(self.tta)


@dataclasses.dataclass
class MemoryEstimate:
    """Peak memory of one case in bytes: ``host`` (CPU RAM) and ``device`` (GPU; 0 on a CPU run), and where the
    sliding-window output is stitched. Excludes the networks' own weights and activations."""

    host: int
    device: int
    stitch: str
    net_shape: Tuple[int, ...]
    passes: int

    def describe(self) -> str:
        mib = 2 ** 20
        dev = f", device {self.device / mib:.0f} MiB" if self.device else ""
        return (f"network grid {'x'.join(map(str, self.net_shape))}, {self.passes} pass(es), stitching on "
                f"{self.stitch}; estimated peak memory host {self.host / mib:.0f} MiB{dev} (+ the model)")


@dataclasses.dataclass
class VolumePrediction:
    """``mask`` (X, Y, Z) uint8 and, when asked, ``probs`` (K, X, Y, Z) float16, both in the input's voxel grid."""

    mask: np.ndarray
    probs: Optional[np.ndarray] = None


def _net_shape(ras_shape, ras_spacing, settings: Settings, roi) -> Tuple[int, ...]:
    if settings.spatial_dims == 3:
        return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(ras_shape, ras_spacing, settings.spacing))
    return (int(ras_shape[2]), *[int(r) for r in roi])  # (Z, h, w) slices


def estimate_memory(in_shape: Sequence[int], net_shape: Sequence[int], num_classes: int, passes: int,
                    stitch_on_device: bool, on_gpu: bool, probabilities: bool = False,
                    window: int = 0) -> Tuple[int, int]:
    """``(host, device)`` bytes at the peak of one case (float32 maps; see the module docstring).

    Host: the read volume, its RAS copy and scaled copy (3 x float32 of the input grid), the mask (uint8), the
    class-by-class resampling back (the current class map and the running maximum, 2 x float32, plus a bool
    map), and the saved probabilities (K x float16) when asked. Stitch side: the network-grid input, MONAI's
    output and count map (K + 1 float32 maps), the running sum over passes when there are several. Compute side:
    one batch of windows in and out, ``window`` = sw_batch_size x window voxels (the model's own activations are
    not known here and come on top).
    """
    n_in, n_net = int(np.prod(in_shape)), int(np.prod(net_shape))
    host = n_in * (3 * 4 + 1) + 2 * n_in * 4 + n_in + (num_classes * n_in * 2 if probabilities else 0)
    stitch = n_net * 4 * (1 + (num_classes + 1) + (num_classes if passes > 1 else 0))
    compute = window * 4 * (1 + 2 * num_classes)  # windows, their logits and the importance-weighted copy
    if not on_gpu:
        return host + stitch + compute, 0
    if stitch_on_device:
        return host, stitch + compute + 2 * n_in * 4  # the resampling back runs where the maps are
    return host + stitch, compute


def _resolve_stitch(settings: Settings, stitch_bytes: int) -> torch.device:
    cpu = torch.device("cpu")
    if settings.device.type != "cuda" or settings.stitch == "cpu":
        return cpu
    if settings.stitch == "device":
        return settings.device
    free, _ = torch.cuda.mem_get_info(settings.device)
    return settings.device if stitch_bytes < 0.5 * free else cpu


@torch.no_grad()
def network_probs(members: Sequence[Member], x: torch.Tensor, settings: Settings,
                  on_windows: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Mean softmax over ``members`` and (``settings.tta``) over every axis flip of the input.

    Args:
        x: 3D: (1, C, D, H, W) in the network grid, on the stitch device; 2D: (Z, 1, X, Y) axial slices.

    Returns:
        3D: (1, K, D, H, W) on the stitch device; 2D: (Z, K, h, w) at the first member's ``roi``.
    """
    s, total, n = settings, None, 0
    for m in members:
        xm = x if s.spatial_dims == 3 else resample_to_shape(x, m.roi).to(s.device)
        if xm.shape[1] == 1 and m.in_chans > 1:
            xm = xm.expand(-1, m.in_chans, *([-1] * s.spatial_dims))
        for axes in flip_sets(s.spatial_dims, s.tta):
            xi = xm.flip(axes) if axes else xm
            if s.spatial_dims == 3:
                p = sliding_window_probs(m.model, xi, m.roi, s.sw_batch_size, s.overlap, s.mode, s.amp,
                                         device=s.device, on_windows=on_windows)
            else:
                p = slice_probs(m.model, xi, s.sw_batch_size * 4, s.amp, on_windows=on_windows)
                p = resample_to_shape(p, members[0].roi)
            p = p.flip(axes) if axes else p
            total = p if total is None else total.add_(p)
            n += 1
            del p, xi
    return total.div_(n)


def _to_input_grid(probs: torch.Tensor, ras_shape: Sequence[int], ornt: np.ndarray, dims: int,
                   in_shape: Optional[Sequence[int]]) -> VolumePrediction:
    """Resample ``probs`` to the RAS grid class by class, argmax, undo the reorientation; ``in_shape`` (the input's
    own shape) keeps the probabilities too."""
    k_total = probs.shape[1]
    kept = np.empty((k_total, *[int(v) for v in in_shape]), np.float16) if in_shape is not None else None
    best_val, best_idx = None, None
    for k in range(k_total):
        if dims == 3:
            p = resample_to_shape(probs[:, k:k + 1], ras_shape)[0, 0]  # (X, Y, Z) RAS
        else:
            p = resample_to_shape(probs[:, k:k + 1], ras_shape[:2])[:, 0].permute(1, 2, 0)  # (Z, X, Y) -> (X, Y, Z)
        if kept is not None:
            kept[k] = from_ras(p.cpu().numpy(), ornt).astype(np.float16)
        if best_val is None:
            best_val, best_idx = p.clone(), torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
        else:
            better = p > best_val  # in place from here on: no third input-grid map
            best_idx[better] = k
            torch.maximum(best_val, p, out=best_val)
            del better
        del p
    mask = np.ascontiguousarray(from_ras(best_idx.cpu().numpy(), ornt))
    return VolumePrediction(mask, kept)


def segment_volume(members: Sequence[Member], vol: NiftiVolume, settings: Settings, *, num_classes: int,
                   probabilities: bool = False, on_plan: Optional[Callable[[MemoryEstimate], None]] = None,
                   on_windows: Optional[Callable[[int], None]] = None,
                   on_start: Optional[Callable[[int], None]] = None) -> VolumePrediction:
    """Mask (and probabilities) of ``vol`` in its own voxel grid (see the module docstring for the steps).

    Args:
        members: The ensemble (one member for a single model).
        settings: Preprocessing and sliding-window options.
        num_classes: Classes including background (for the memory estimate).
        probabilities: Also return the mean probabilities (K, X, Y, Z) float16 in the input grid.
        on_plan: Called with the :class:`MemoryEstimate` before the networks run.
        on_windows: Called with the number of windows (3D) or slices (2D) each forward finished.
        on_start: Called with the total number of windows/slices of this case.
    """
    import nibabel as nib

    s = settings
    ras, ornt = to_ras(vol.data, vol.affine)  # (X, Y, Z) RAS voxel order
    ras_affine = vol.affine @ nib.orientations.inv_ornt_aff(ornt, vol.data.shape)
    ras_spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(0))
    net_shape = _net_shape(ras.shape, ras_spacing, s, members[0].roi)
    passes = len(members) * s.passes
    on_gpu = s.device.type == "cuda"
    window = s.sw_batch_size * max(int(np.prod(m.roi)) for m in members)
    if s.spatial_dims == 2:
        window = s.sw_batch_size * 4 * max(int(np.prod(m.roi)) for m in members)
    host_all, dev_all = estimate_memory(ras.shape, net_shape, num_classes, passes, True, on_gpu, probabilities,
                                        window)
    stitch_dev = _resolve_stitch(s, dev_all) if s.spatial_dims == 3 else s.device
    host, dev = estimate_memory(ras.shape, net_shape, num_classes, passes, stitch_dev.type == "cuda", on_gpu,
                                probabilities, window)
    if on_plan is not None:
        on_plan(MemoryEstimate(host, dev, stitch_dev.type, tuple(net_shape), passes))
    if on_start is not None:
        per = (sum(count_windows(net_shape, m.roi, s.overlap) for m in members) if s.spatial_dims == 3
               else len(members) * net_shape[0])
        on_start(per * s.passes)
    norm = dict(normalization=s.normalization, intensity_stats=s.intensity_stats, a_min=s.a_min, a_max=s.a_max)
    x = torch.from_numpy(np.ascontiguousarray(normalize_image(ras, norm)))[None, None]
    ras_shape = tuple(ras.shape)
    del ras
    if s.spatial_dims == 3:
        x = resample_to_shape(x.to(stitch_dev), net_shape)  # (1, 1, D, H, W) in the training grid
    else:
        x = x[0, 0].permute(2, 0, 1)[:, None].to(s.device)  # (Z, 1, X, Y) axial slices
    probs = network_probs(members, x, s, on_windows)
    del x
    return _to_input_grid(probs, ras_shape, ornt, s.spatial_dims, vol.data.shape if probabilities else None)


def predict_volume(model: Callable, vol: NiftiVolume, *, spatial_dims: int, spacing: Sequence[float],
                   a_min: float, a_max: float, roi: Sequence[int], device: torch.device, sw_batch_size: int = 4,
                   overlap: float = 0.5, mode: str = "gaussian", amp: bool = False, in_chans: int = 1,
                   tta: bool = False, stitch: str = "auto", normalization: Optional[str] = None,
                   intensity_stats: Optional[dict] = None) -> np.ndarray:
    """Label map (X, Y, Z) uint8 in ``vol``'s own voxel grid of one model (or a list of models sharing ``roi``)."""
    models = model if isinstance(model, (list, tuple)) else [model]
    settings = Settings(spatial_dims, spacing, a_min, a_max, device, sw_batch_size, overlap, mode, amp, tta, stitch,
                        normalization, intensity_stats)
    members = [Member(m, roi, in_chans) for m in models]
    k = 2
    return segment_volume(members, vol, settings, num_classes=k).mask


def build_model_from_run(cfg, state_dict: dict, device: Optional[torch.device] = None) -> torch.nn.Module:
    """Rebuild a seg model from a run's config and weights (``engine.load_run``)."""
    import medvit
    from backbones._builder import load_state_strict

    model = medvit.create_model(cfg.model, **model_overrides(cfg.model_args))  # never re-reads --pretrained
    load_state_strict(model, state_dict, "--checkpoint")  # a wrong-shape tensor: UserError naming both shapes
    return model.to(device or torch.device("cpu")).eval()


def label_colors(n: int) -> np.ndarray:
    """(n, 4) RGBA colours, background transparent (tab20, so 13 organs stay distinguishable)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colors = np.array([cmap(i % 20) for i in range(n)], dtype=np.float32)
    colors[0, 3] = 0.0
    return colors


def save_overlay(path, image: NiftiVolume, mask: np.ndarray, names: Sequence[str], window=(-175.0, 250.0)) -> None:
    """PNG with three orthogonal mid-slices (sagittal, coronal, axial, RAS-oriented, true aspect) and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    img, ornt = to_ras(image.data, image.affine)
    lab, _ = to_ras(mask, image.affine)
    sp = np.sqrt((image.affine[:3, :3] ** 2).sum(0))[ornt[:, 0].astype(int).argsort()]
    colors = label_colors(len(names))
    centre = _centre(lab)
    views = [("sagittal", img[centre[0]], lab[centre[0]], sp[2] / sp[1]),
             ("coronal", img[:, centre[1]], lab[:, centre[1]], sp[2] / sp[0]),
             ("axial", img[:, :, centre[2]], lab[:, :, centre[2]], sp[1] / sp[0])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    for ax, (title, im2, lab2, aspect) in zip(axes, views):
        ax.imshow(im2.T, cmap="gray", origin="lower", vmin=window[0], vmax=window[1], aspect=aspect)
        ax.imshow(colors[np.clip(lab2, 0, len(names) - 1)].transpose(1, 0, 2), origin="lower", aspect=aspect,
                  alpha=0.55, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    present = [int(v) for v in np.unique(mask) if 0 < v < len(names)]
    fig.legend(handles=[Patch(color=colors[i][:3], label=names[i]) for i in present], loc="lower center",
               ncol=min(7, max(1, len(present))), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    try:
        atomic_savefig(fig, path)
    finally:
        plt.close(fig)


def _centre(lab: np.ndarray) -> tuple:
    """Centre of the labelled voxels (the volume centre when nothing is labelled)."""
    idx = np.argwhere(lab > 0)
    if idx.size == 0:
        return tuple(s // 2 for s in lab.shape)
    return tuple(int(v) for v in np.round(idx.mean(0)))


class Predictor:
    """Trained seg model(s) plus the preprocessing their run used, applied to files in their own grids.

    Args:
        checkpoint: Run folder (``checkpoints/best``, else ``last``), ``.safetensors`` file or
            :class:`engine.pretrained.WeightsRun`; a list of them is an ensemble (probabilities averaged; every
            member must share the spacing, intensity window, class count and dimensionality).
        device: ``auto``, ``cpu``, ``cuda``... (under ``torchrun`` ``auto``/``cuda`` take ``cuda:LOCAL_RANK``).
        overlap: Sliding-window overlap (3D).
        sw_batch_size: Windows (3D) per forward; 2D models use 4x as many slices.
        mode: ``gaussian`` or ``constant`` blending.
        amp: Autocast (bf16 on CPU, fp16 on CUDA); the older switch, kept for ``--amp``.
        precision: ``auto`` (bf16 where the device multiplies it natively, else fp32), ``32``, ``bf16`` or
            ``16``; the network runs under :func:`engine.context.autocast_for`, probabilities stay fp32.
        tta: Mirroring test-time augmentation, averaged in probability space: ``True`` flips the axes the run was
            trained to flip (all of them unless it trained with ``flip_prob=0``), or give the axes (``"x,y"``,
            ``(0, 1)``, ``"all"``); see :func:`mirror_axes`.
        stitch: ``auto``, ``device`` or ``cpu``: where the sliding-window output is stitched.
        postprocess: ``none``, ``lcc`` (keep each class's largest connected component) or ``auto`` (what the
            run's ``vtk seg eval`` found better on its validation cases; ``none`` when it was never evaluated).
    """

    def __init__(self, checkpoint, device: str = "auto", overlap: float = 0.5, sw_batch_size: int = 4,
                 mode: str = "gaussian", amp: bool = False, precision: str = "auto", *, tta: Any = False,
                 stitch: str = "auto", postprocess: str = "none") -> None:
        from engine import load_run
        from engine.context import precision_option
        from engine.errors import UserError

        sources = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
        if not sources:
            raise UserError("--checkpoint: give at least one run or weights file")
        self._check_options(overlap, mode, stitch, postprocess)
        dev = _device(device)
        prec = precision_option(precision, dev)  # 32, bf16 or 16-mixed; checked before any model is built
        loaded = []
        for src in sources:
            cfg, state_dict = load_run(src)
            if cfg.task and cfg.task != "seg":
                raise UserError(f"{src}: a {cfg.task!r} checkpoint, not a seg one")
            loaded.append((src, cfg, exported_model(src) or build_model_from_run(cfg, state_dict, dev)))
        self._setup(loaded, dev, overlap, sw_batch_size, mode, amp, tta, stitch, postprocess)
        self.precision = prec

    @staticmethod
    def _check_options(overlap: float, mode: str, stitch: str, postprocess: str) -> None:
        from engine.errors import UserError
        from medvit.postprocess import POSTPROCESS_MODES

        if not 0.0 <= overlap < 1.0:
            raise UserError(f"--overlap {overlap}: must be in [0, 1)")
        check_choice("--mode", mode, BLEND_MODES)
        check_choice("--stitch", stitch, STITCH_MODES)
        check_choice("--postprocess", postprocess, POSTPROCESS_MODES)

    def _setup(self, loaded, dev, overlap, sw_batch_size, mode, amp, tta, stitch, postprocess) -> None:
        """``loaded``: ``[(source, cfg, model callable)]``; fills the members and the shared protocol."""
        from medvit.postprocess import resolve_postprocess

        self.sources = [src for src, _, _ in loaded]
        self.cfg = loaded[0][1]
        self.device = dev
        self.members: List[Member] = []
        first = None
        for src, cfg, model in loaded:
            proto = _protocol(cfg, model)
            if first is None:
                first = proto
            else:
                _check_same(src, proto, first)
            self.members.append(Member(model, proto["roi"], proto["in_chans"]))
        self.dims, self.names, self.num_classes = first["dims"], first["names"], first["num_classes"]
        axes, self.tta_reason = mirror_axes(tta, self.dims, self.cfg.data_args)  # an ensemble passes its axes
        self.settings = Settings(self.dims, first["spacing"], first["a_min"], first["a_max"], dev, sw_batch_size,
                                 overlap, mode, amp, axes, stitch, first["normalization"], first["intensity_stats"])
        self.kw = dict(spatial_dims=self.dims, spacing=first["spacing"], a_min=first["a_min"], a_max=first["a_max"],
                       roi=first["roi"], device=dev, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
                       amp=amp, in_chans=first["in_chans"])
        self.postprocess, self.postprocess_reason = resolve_postprocess(postprocess, self.sources[0],
                                                                        len(self.members) > 1)

    def describe(self) -> str:
        """One line: models, TTA passes, postprocessing, stitching (printed before a run)."""
        s = self.settings
        tta = self.tta_reason
        return (f"{len(self.members)} model(s) ({'ensemble, ' if len(self.members) > 1 else ''}probabilities "
                f"averaged), {tta}, postprocess {self.postprocess} ({self.postprocess_reason}), stitch {s.stitch}, "
                f"device {self.device}")

    @property
    def model(self) -> Callable:
        """The first (or only) network."""
        return self.members[0].model

    @classmethod
    def from_model(cls, model: Callable, *, spatial_dims: int, roi: Sequence[int], num_classes: int,
                   spacing: Sequence[float] = (1.5, 1.5, 2.0), a_min: float = -175.0, a_max: float = 250.0,
                   names: Optional[Sequence[str]] = None, in_chans: int = 1, device: str = "cpu",
                   **options: Any) -> "Predictor":
        """A Predictor around any callable (an ONNX session wrapper, a scripted module) with an explicit protocol.

        ``options``: ``overlap``, ``sw_batch_size``, ``mode``, ``amp``, ``tta``, ``stitch``, ``postprocess``.
        """
        from engine.config import TrainConfig

        da = dict(spatial_dims=spatial_dims, roi=list(roi), spacing=list(spacing), a_min=a_min, a_max=a_max,
                  names=list(names or []))
        cfg = TrainConfig(task="seg", model=type(model).__name__, model_args=dict(num_classes=num_classes,
                                                                                  in_chans=in_chans), data_args=da)
        from engine.choices import check_keys

        o = dict(overlap=0.5, sw_batch_size=4, mode="gaussian", amp=False, tta=False, stitch="auto",
                 postprocess="none", precision="32")
        check_keys("Predictor.from_model", options, o, error=ValueError)
        o.update(options)
        cls._check_options(o["overlap"], o["mode"], o["stitch"], o["postprocess"])
        pred = cls.__new__(cls)
        pred._setup([(None, cfg, model)], _device(device), o["overlap"], o["sw_batch_size"], o["mode"], o["amp"],
                    o["tta"], o["stitch"], o["postprocess"])
        from engine.context import precision_option

        pred.precision = precision_option(o["precision"], pred.device)
        return pred

    @classmethod
    def ensemble(cls, predictors: Sequence["Predictor"]) -> "Predictor":
        """One Predictor averaging the probabilities of several (the first one's options)."""
        first = predictors[0]
        loaded = [(src, p.cfg, m.model) for p in predictors for src, m in zip(p.sources, p.members)]
        s = first.settings
        pred = cls.__new__(cls)
        pred._setup(loaded, first.device, s.overlap, s.sw_batch_size, s.mode, s.amp, s.tta, s.stitch,
                    first.postprocess)
        pred.precision = first.precision
        return pred

    @classmethod
    def from_weights(cls, model: str, pretrained, *args: Any, protocol: Optional[Dict[str, Any]] = None,
                     **kwargs: Any) -> "Predictor":
        """A released weights file (or a list: an ensemble) with its model's registry protocol, no run.

        Args:
            model: Registry name or alias (``unetr``, ``swin_unetr``, ...).
            pretrained: The weights file (MONAI, timm, Google ``.npz``, vtk, ...), or several.
            *args, **kwargs: As for the constructor (``device``, ``overlap``, ``tta``, ...).
            protocol: Overrides for :func:`medvit.pretrained.weights_run` (``roi``, ``spacing``, ``a_min``,
                ``a_max``, ``num_classes``, ``names``, ``in_chans``, ``model_args``).
        """
        from medvit.pretrained import weights_run

        files = list(pretrained) if isinstance(pretrained, (list, tuple)) else [pretrained]
        runs = [weights_run(model, f, **(protocol or {})) for f in files]
        pred = cls(runs if len(runs) > 1 else runs[0], *args, **kwargs)
        pred.report = runs[0].report
        return pred

    def predict(self, vol: NiftiVolume, probabilities: bool = False, progress: Any = None) -> VolumePrediction:
        """Mask (post-processed as ``self.postprocess`` says) and optionally the probabilities, in ``vol``'s grid.

        Args:
            progress: An :class:`engine.progress.WorkProgress` (windows of this case, ETA; the memory estimate is
                printed through its ``message``).
        """
        from medvit.postprocess import apply_postprocess

        hooks = {}
        if progress is not None:
            name = getattr(vol.path, "name", "volume")
            hooks = dict(on_plan=lambda e: progress.message(f"{name}: {e.describe()}"),
                         on_start=lambda n: progress.start_case(name, n), on_windows=progress.advance)
        from engine.context import autocast_for as autocast_precision

        with autocast_precision(self.precision, self.device):  # sliding-window sums stay in the input's fp32
            out = segment_volume(self.members, vol, self.settings, num_classes=self.num_classes,
                                 probabilities=probabilities, **hooks)
        out.mask = apply_postprocess(out.mask, self.postprocess, self.num_classes)
        return out

    @classmethod
    def from_model_file(cls, path, *args: Any, **kwargs: Any) -> "Predictor":
        """A ``vtk models export`` file (ONNX through onnxruntime, or TorchScript) with the ROI, spacing, intensity
        window and class names of its metadata (:func:`backbones.runtime.load_model_file`); ``*args, **kwargs``
        as for the constructor."""
        from backbones.runtime import load_model_file

        return cls(load_model_file(path, "seg"), *args, **kwargs)

    def predict_nifti(self, vol: NiftiVolume) -> np.ndarray:
        """Label map (uint8) in ``vol``'s grid."""
        return self.predict(vol).mask

    @torch.no_grad()
    def predict_image2d(self, image: np.ndarray, probabilities: bool = False):
        """Label map (H, W) of a 2D image (C, H, W) in [0, 1] (folder2d models); with ``probabilities`` also the
        (K, H, W) float16 probabilities."""
        from medvit.postprocess import apply_postprocess

        x = torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device)  # (1, C, H, W)
        from engine.context import autocast_for as autocast_precision

        with autocast_precision(self.precision, self.device):
            probs = network_probs(self.members, x, self.settings).float()
        probs = resample_to_shape(probs, image.shape[1:])  # (1, K, H, W)
        mask = apply_postprocess(probs.argmax(1)[0].to(torch.uint8).cpu().numpy(), self.postprocess,
                                 self.num_classes)
        if probabilities:
            return mask, probs[0].cpu().numpy().astype(np.float16)
        return mask


def _protocol(cfg, model) -> Dict[str, Any]:
    da = cfg.data_args
    names = list(da.get("names") or [])
    return dict(dims=int(getattr(model, "spatial_dims", da.get("spatial_dims", 3))), names=names,
                num_classes=int(cfg.model_args.get("num_classes", len(names) or 2)),
                spacing=[float(v) for v in da.get("spacing", (1.5, 1.5, 2.0))],
                a_min=float(da.get("a_min", -175.0)), a_max=float(da.get("a_max", 250.0)),
                roi=[int(v) for v in da["roi"]], in_chans=int(cfg.model_args.get("in_chans", 1)),
                normalization=da.get("normalization"), intensity_stats=da.get("intensity_stats"))


def _check_same(src, proto: Dict[str, Any], first: Dict[str, Any]) -> None:
    from engine.errors import UserError

    for key in ("dims", "num_classes", "spacing", "a_min", "a_max", "normalization", "intensity_stats"):
        if key == "spacing" and proto["dims"] == 2:
            continue
        if proto[key] != first[key]:
            raise UserError(f"{src}: ensemble members must share {key}: {proto[key]} here, {first[key]} in the "
                            "first")


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s share of ``items`` (every ``world_size``-th from ``rank``): disjoint, covering all."""
    return list(items)[rank::world_size]


def dist_rank() -> Tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` under ``torchrun``, ``(0, 1)`` otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def predict_files(pred: Predictor, files: Sequence, out, overlay: bool = True, *,
                  probabilities: Optional[str] = None, series: Optional[str] = None,
                  rank: Optional[int] = None, world_size: Optional[int] = None,
                  progress: Any = None, cpu_heap: str = "retain") -> Iterator[Dict[str, Any]]:
    """Predict ``files`` (NIfTI, NRRD, MHA/MHD files or DICOM series folders) into ``out``.

    Writes ``<stem>_seg.<ext>`` in each input's grid (NIfTI for NIfTI and DICOM, NRRD for NRRD, MHA for
    MHA/MHD), ``<stem>_overlay.png`` and, with ``probabilities`` (``npz`` or ``nifti``), ``<stem>_probs.npz`` /
    ``<stem>_probs.nii.gz``. Under ``torchrun`` (or with ``rank``/``world_size``) each rank takes every
    ``world_size``-th file, so no file is written twice. On the CPU the C heap keeps freed memory for the next
    batch of windows (``cpu_heap``, :func:`engine.heap.set_cpu_heap_on`).

    Yields one ``{"input", "mask", "shape", "overlay", "probs"}`` per file of this rank as it is written.
    """
    from pathlib import Path

    from engine.errors import UserError
    from engine.heap import set_cpu_heap_on
    from medvit.formats import output_stem, read_volume, write_mask, write_probabilities

    if probabilities is not None:
        check_choice("--save-probabilities", probabilities, PROB_FORMATS)
    env_rank, env_world = dist_rank()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    out = Path(out)
    stems: Dict[str, Path] = {}
    for f in files:  # every rank checks all files, so a clash fails everywhere before anything is written
        st = output_stem(f)
        if st in stems:
            raise UserError(f"{f}: its outputs {st}_seg.* would overwrite those of {stems[st]}")
        stems[st] = Path(f)
    set_cpu_heap_on(pred.device, cpu_heap)
    for f in shard(files, rank, world_size):
        f = Path(f)
        vol = read_volume(f, series=series)
        res = pred.predict(vol, probabilities=probabilities is not None, progress=progress)
        stem = output_stem(f)
        dst = write_mask(out, stem, vol, res.mask)
        probs = None
        if probabilities is not None:
            probs = write_probabilities(out, stem, vol, res.probs, probabilities, pred.names)
        png = None
        if overlay:
            png = out / f"{stem}_overlay.png"
            save_overlay(png, vol, res.mask, pred.names or ["background"],
                         (pred.settings.a_min, pred.settings.a_max))
        if progress is not None:
            progress.end_case()
        yield {"input": f, "mask": dst, "shape": tuple(res.mask.shape), "overlay": png, "probs": probs}


def _device(name: str) -> torch.device:
    from engine.distributed import resolve_device

    rank_env = os.environ.get("LOCAL_RANK"), os.environ.get("WORLD_SIZE")
    local_rank, world = int(rank_env[0] or 0), int(rank_env[1] or 1)
    if name in ("auto", "cuda") and world > 1:
        return resolve_device(name, local_rank, world)
    return resolve_device(name)  # "--device cuda" without a GPU: a UserError, not a driver traceback
