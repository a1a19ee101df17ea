"""Inference: sliding windows for 3D models, slice-by-slice for 2D models, and masks in the input's own grid.

Sliding-window inference is MONAI's ``sliding_window_inference`` (overlap, gaussian blending, ``sw_batch_size``,
AMP), as in UNETR (Hatamizadeh et al., arXiv:2103.10504) and Swin-UNETR (Hatamizadeh et al., "Swin UNETR: Swin
Transformers for Semantic Segmentation of Brain Tumors in MRI Images", arXiv:2201.01740). 2D models (TransUNet,
arXiv:2102.04306; MedT, arXiv:2102.10662) predict every axial slice and the slices are restacked.

:func:`predict_volume` returns a mask in the grid of the input file whatever its orientation, origin and spacing:

1. reorient to RAS by an exact axis permutation/flip (nibabel ``io_orientation``);
2. resample to the training spacing (trilinear, field-of-view preserving, ``align_corners=False``);
3. run the network; resample the class probabilities back to the RAS grid with the same convention (so every
   voxel keeps its world position) and take the argmax;
4. undo the permutation/flip. The caller writes the mask with the input's affine and header.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backbones.runtime import exported_model
from engine.choices import check_choice
from engine.io import atomic_savefig
from engine.pretrained import model_overrides
from medvit.data.transforms import from_ras, scale_intensity, to_ras
from medvit.io import NiftiVolume

__all__ = ["sliding_window_probs", "slice_probs", "predict_volume", "resample_to_shape", "autocast_for",
           "build_model_from_run", "save_overlay", "label_colors", "Predictor", "BLEND_MODES", "predict_files"]

BLEND_MODES = ("gaussian", "constant")  # sliding-window blending (MONAI ``BlendMode``)


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CPU, fp16 on CUDA, or a no-op."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


@torch.no_grad()
def sliding_window_probs(model: Callable, image: torch.Tensor, roi: Sequence[int], sw_batch_size: int = 4,
                         overlap: float = 0.5, mode: str = "gaussian", amp: bool = False) -> torch.Tensor:
    """Softmax probabilities (B, K, D, H, W) of a 3D model over ``image`` (B, C, D, H, W) by sliding windows."""
    from monai.inferers import sliding_window_inference

    with autocast_for(image.device, amp):
        logits = sliding_window_inference(image, roi_size=tuple(roi), sw_batch_size=sw_batch_size,
                                          predictor=model, overlap=overlap, mode=mode)
    return torch.softmax(torch.as_tensor(logits).float(), dim=1)


@torch.no_grad()
def slice_probs(model: Callable, stack: torch.Tensor, batch_size: int = 16, amp: bool = False) -> torch.Tensor:
    """Softmax probabilities (Z, K, H, W) of a 2D model applied to each slice of ``stack`` (Z, C, H, W)."""
    out = []
    for i in range(0, stack.shape[0], batch_size):
        with autocast_for(stack.device, amp):
            logits = model(stack[i:i + batch_size])
        out.append(torch.softmax(logits.float(), dim=1))
    return torch.cat(out)


def resample_to_shape(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample (B, C, *spatial) to ``shape`` keeping the field of view (linear, ``align_corners=False``)."""
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(int(s) for s in shape), mode=mode, align_corners=False)


def _argmax_resampled(probs: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
    """Argmax over classes after resampling each class map of ``probs`` (1, K, ...) to ``shape``, class by class."""
    best_val, best_idx = None, None
    for k in range(probs.shape[1]):
        p = resample_to_shape(probs[:, k:k + 1], shape)[0, 0]
        if best_val is None:
            best_val, best_idx = p, torch.zeros_like(p, dtype=torch.uint8)
        else:
            better = p > best_val
            best_val = torch.where(better, p, best_val)
            best_idx[better] = k
    return best_idx.cpu().numpy()


def predict_volume(model: torch.nn.Module, vol: NiftiVolume, *, spatial_dims: int, spacing: Sequence[float],
                   a_min: float, a_max: float, roi: Sequence[int], device: torch.device, sw_batch_size: int = 4,
                   overlap: float = 0.5, mode: str = "gaussian", amp: bool = False,
                   in_chans: int = 1) -> np.ndarray:
    """Label map (X, Y, Z) uint8 in ``vol``'s own voxel grid (see the module docstring for the steps)."""
    import nibabel as nib

    ras, ornt = to_ras(vol.data, vol.affine)  # (X, Y, Z) RAS voxel order
    ras_affine = vol.affine @ nib.orientations.inv_ornt_aff(ornt, vol.data.shape)
    ras_spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(0))
    x = torch.from_numpy(np.ascontiguousarray(scale_intensity(ras, a_min, a_max)))[None, None].to(device)
    if spatial_dims == 3:
        net_shape = [max(1, int(round(n * s / t))) for n, s, t in zip(ras.shape, ras_spacing, spacing)]
        x = resample_to_shape(x, net_shape)  # (1, 1, D, H, W) in the training grid
        probs = sliding_window_probs(model, x, roi, sw_batch_size, overlap, mode, amp)
        mask = _argmax_resampled(probs, ras.shape)
    else:
        stack = x[0, 0].permute(2, 0, 1)[:, None]  # (Z, 1, X, Y) axial slices
        stack = resample_to_shape(stack, roi).expand(-1, in_chans, -1, -1)
        probs = slice_probs(model, stack, sw_batch_size * 4, amp)  # (Z, K, h, w)
        probs = resample_to_shape(probs, ras.shape[:2])  # (Z, K, X, Y)
        mask = probs.argmax(1).permute(1, 2, 0).to(torch.uint8).cpu().numpy()  # (X, Y, Z)
    return np.ascontiguousarray(from_ras(mask, ornt))


def build_model_from_run(cfg, state_dict: dict, device: Optional[torch.device] = None) -> torch.nn.Module:
    """Rebuild a seg model from a run's config and weights (``engine.load_run``)."""
    import medvit

    model = medvit.create_model(cfg.model, **model_overrides(cfg.model_args))  # never re-reads --pretrained
    model.load_state_dict(state_dict)
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
    """A trained seg model plus the preprocessing its run used, applied to files in their own grids.

    Args:
        checkpoint: Run folder (``checkpoints/best``, else ``last``) or ``.safetensors`` file.
        device: ``auto``, ``cpu``, ``cuda``...
        overlap: Sliding-window overlap (3D).
        sw_batch_size: Windows (3D) per forward; 2D models use 8x as many slices.
        mode: ``gaussian`` or ``constant`` blending.
        amp: Autocast (bf16 on CPU, fp16 on CUDA).
    """

    def __init__(self, checkpoint, device: str = "auto", overlap: float = 0.5, sw_batch_size: int = 4,
                 mode: str = "gaussian", amp: bool = False) -> None:
        from engine import load_run
        from engine.errors import UserError

        if not 0.0 <= overlap < 1.0:
            raise UserError(f"--overlap {overlap}: must be in [0, 1)")
        check_choice("--mode", mode, BLEND_MODES)
        self.cfg, state_dict = load_run(checkpoint)
        if self.cfg.task and self.cfg.task != "seg":
            raise UserError(f"{checkpoint}: a {self.cfg.task!r} checkpoint, not a seg one")
        self.device = _device(device)
        self.model = exported_model(checkpoint) or build_model_from_run(self.cfg, state_dict, self.device)
        da = self.cfg.data_args
        self.dims = int(getattr(self.model, "spatial_dims", da.get("spatial_dims", 3)))
        self.names = list(da.get("names") or [])
        self.num_classes = int(self.cfg.model_args.get("num_classes", len(self.names) or 2))
        self.kw = dict(spatial_dims=self.dims, spacing=da.get("spacing", (1.5, 1.5, 2.0)),
                       a_min=float(da.get("a_min", -175.0)), a_max=float(da.get("a_max", 250.0)),
                       roi=da["roi"], device=self.device, sw_batch_size=sw_batch_size, overlap=overlap,
                       mode=mode, amp=amp, in_chans=int(self.cfg.model_args.get("in_chans", 1)))

    @classmethod
    def from_weights(cls, model: str, pretrained, *args: Any, protocol: Optional[Dict[str, Any]] = None,
                     **kwargs: Any) -> "Predictor":
        """A released weights file with its model's registry protocol (ROI, spacing, window, class names), no run.

        Args:
            model: Registry name or alias (``unetr``, ``swin_unetr``, ...).
            pretrained: The weights file (MONAI, timm, Google ``.npz``, vtk, ...).
            *args, **kwargs: As for the constructor (``device``, ``overlap``, ...).
            protocol: Overrides for :func:`medvit.pretrained.weights_run` (``roi``, ``spacing``, ``a_min``,
                ``a_max``, ``num_classes``, ``names``, ``in_chans``, ``model_args``).
        """
        from medvit.pretrained import weights_run

        run = weights_run(model, pretrained, **(protocol or {}))
        pred = cls(run, *args, **kwargs)
        pred.report = run.report
        return pred

    @classmethod
    def from_model_file(cls, path, *args: Any, **kwargs: Any) -> "Predictor":
        """A ``vtk models export`` file (ONNX through onnxruntime, or TorchScript) with the ROI, spacing, intensity
        window and class names of its metadata (:func:`backbones.runtime.load_model_file`); ``*args, **kwargs``
        as for the constructor."""
        from backbones.runtime import load_model_file

        return cls(load_model_file(path, "seg"), *args, **kwargs)

    def predict_nifti(self, vol: NiftiVolume) -> np.ndarray:
        """Label map (uint8) in ``vol``'s grid."""
        return predict_volume(self.model, vol, **self.kw)

    @torch.no_grad()
    def predict_image2d(self, image: np.ndarray) -> np.ndarray:
        """Label map (H, W) of a 2D image (C, H, W) in [0, 1] (folder2d models)."""
        x = torch.from_numpy(image)[None].to(self.device)  # (1, C, H, W)
        probs = slice_probs(self.model, resample_to_shape(x, self.kw["roi"]), 1, self.kw["amp"])
        return resample_to_shape(probs, image.shape[1:]).argmax(1)[0].to(torch.uint8).cpu().numpy()


def predict_files(pred: Predictor, files: Sequence, out, overlay: bool = True) -> Iterator[Dict[str, Any]]:
    """Write ``<stem>_seg.nii.gz`` (input's shape, affine and header) and ``<stem>_overlay.png`` into ``out``.

    Yields one ``{"input", "mask", "shape", "overlay"}`` per file as it is written (``overlay`` is ``None``
    without ``overlay``).
    """
    from pathlib import Path

    from medvit.io import nifti_stem, read_nifti, write_nifti

    out = Path(out)
    for f in files:
        f = Path(f)
        vol = read_nifti(f)
        mask = pred.predict_nifti(vol)
        stem = nifti_stem(f)
        dst = write_nifti(out / f"{stem}_seg.nii.gz", mask, vol.affine, vol.header)
        png = None
        if overlay:
            window = (pred.kw["a_min"], pred.kw["a_max"])
            png = out / f"{stem}_overlay.png"
            save_overlay(png, vol, mask, pred.names or ["background"], window)
        yield {"input": f, "mask": dst, "shape": tuple(mask.shape), "overlay": png}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
