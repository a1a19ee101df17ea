"""``vtk seg predict`` of a real-size CT end to end against a MONAI tutorial-style script, same weights and overlap.

The CT is synthetic but real-sized and stored like a scanner's export (int16 HU, 512 x 512 x ``--slices``,
0.75 x 0.75 x 2.5 mm, an LPS-style affine with flipped x/y so reorientation is not a no-op): a body ellipse of
soft tissue, two lungs, a spine and noise. The weights are one UNETR (MONAI's ``UNETR``, seeded init, or
``--weights`` for a trained MONAI state dict), saved once; both sides read that file.

* vtk: ``vtk seg predict --model unetr --pretrained W --input CT --out DIR --overlap O --no-overlay``
  (in-process ``cli.main.main``; ``--precision`` default ``auto``; the C heap ``retain``, which the command
  sets, :func:`engine.heap.set_cpu_heap_on`).
* MONAI: the tutorial pipeline (``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd("RAS")``,
  ``Spacingd``, ``ScaleIntensityRanged``, a ``DataLoader``, ``sliding_window_inference`` with a gaussian blend,
  ``decollate_batch``, ``Invertd`` back to the scan's grid, ``AsDiscreted(argmax)``, ``SaveImaged``), fp32 as the
  tutorials run it (``--monai-precision bf16`` for autocast), on glibc's default heap.

Both include reading the file, building the model from the weights file and writing the mask; MONAI's rounds
run first (glibc's heap is then untouched: once vtk's command sets its policy, no call gives glibc back its
dynamic mmap threshold), then vtk's, and medians are reported with the ratio MONAI / vtk (> 1: vtk faster) and
the share of voxels whose labels differ. With seeded (untrained) weights the logits of many voxels are near ties, so the
bf16-vs-fp32 part of the difference is an upper bound of what a trained model shows; ``vtk fp32 vs MONAI`` isolates
the pipelines' conventions (orientation, resampling, inversion).

Usage::

    nice python -m benchmarks.seg_predict_vs_monai --slices 100 --rounds 2
    python -m benchmarks.seg_predict_vs_monai --size tiny            # seconds: a reduced UNETR on 128x128x24
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

__all__ = ["main", "synth_ct", "save_weights", "monai_predict", "vtk_predict", "run", "UNETR_SIZES"]

ROI, SPACING, A_MIN, A_MAX, K = 96, (1.5, 1.5, 2.0), -175.0, 250.0, 14
UNETR_SIZES = {"tiny": dict(hidden_size=64, mlp_dim=256, num_heads=2, feature_size=4, roi=32),
               "reduced": dict(hidden_size=192, mlp_dim=768, num_heads=3, feature_size=8, roi=ROI),
               "full": dict(hidden_size=768, mlp_dim=3072, num_heads=12, feature_size=16, roi=ROI)}


def synth_ct(path: Path, shape=(512, 512, 100), spacing=(0.75, 0.75, 2.5), seed: int = 0,
             label_path: Optional[Path] = None) -> Path:
    """Write a CT-like int16 NIfTI (HU) with an LPS-style affine (x and y flipped); with ``label_path`` also its
    ground truth on the same grid (uint8: 0 air and lung, 1 soft tissue, 2 spine)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    x = (np.arange(X) - X / 2)[:, None, None] / (X / 2)
    y = (np.arange(Y) - Y / 2)[None, :, None] / (Y / 2)
    z = (np.arange(Z) / max(Z - 1, 1))[None, None, :]
    vol = np.full(shape, -1000.0, np.float32)
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    vol[np.broadcast_to(body, shape)] = 40.0
    for cx in (-0.35, 0.35):  # lungs shrink towards the bottom of the scan
        lung = ((x - cx) / 0.25) ** 2 + (y / (0.35 + 0.1 * z)) ** 2 < 1
        vol[np.broadcast_to(lung, shape)] = -800.0
    spine = (x / 0.08) ** 2 + ((y - 0.4) / 0.08) ** 2 < 1
    vol[np.broadcast_to(spine, shape)] = 700.0
    label = (vol == 40.0).astype(np.uint8) + 2 * (vol == 700.0).astype(np.uint8)  # (X, Y, Z) before the noise
    vol += rng.normal(0, 20, shape).astype(np.float32)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (X * spacing[0] / 2, Y * spacing[1] / 2, -Z * spacing[2] / 2)
    img = nib.Nifti1Image(vol.astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    if label_path is not None:
        nib.save(nib.Nifti1Image(label, affine), str(label_path))
    return path


def train_weights(ct: Path, label: Path, size: str, steps: int, seed: int = 0,
                  lr: float = 1e-2) -> Dict[str, torch.Tensor]:
    """Train MONAI's ``UNETR`` for ``steps`` AdamW steps (``auto`` precision: bf16 autocast where the CPU has native
    bf16, else fp32; batch 1) on random ``roi^3`` crops of the
    synthetic CT and its labels, preprocessed as the MONAI script does (RAS, ``SPACING``, HU window), so that both
    pipelines time a model with confident predictions (untrained logits are near ties everywhere and any
    half-voxel resampling difference flips them). The ViT is frozen (random features; the convolutional
    encoder/decoder path learns the tissue classes), which keeps the training to minutes on a CPU."""
    from monai.networks.nets import UNETR
    from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ScaleIntensityRanged,
                                  Spacingd)

    from engine.context import autocast_for

    cfg = UNETR_SIZES[size]
    roi = cfg["roi"]
    pre = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
                   Orientationd(keys=["image", "label"], axcodes="RAS"),
                   Spacingd(keys=["image", "label"], pixdim=SPACING, mode=("bilinear", "nearest")),
                   ScaleIntensityRanged(keys="image", a_min=A_MIN, a_max=A_MAX, b_min=0.0, b_max=1.0, clip=True)])
    d = pre({"image": str(ct), "label": str(label)})
    img, lab = torch.as_tensor(d["image"])[None].float(), torch.as_tensor(d["label"])[None, 0].long()  # (1,1,*S)
    pad = [max(0, roi - n) for n in img.shape[2:]]
    if any(pad):
        widths = [w for p in reversed(pad) for w in (0, p)]
        img, lab = torch.nn.functional.pad(img, widths), torch.nn.functional.pad(lab, widths)
    torch.manual_seed(seed)
    net = UNETR(in_channels=1, out_channels=K, img_size=(roi,) * 3, feature_size=cfg["feature_size"],
                hidden_size=cfg["hidden_size"], mlp_dim=cfg["mlp_dim"], num_heads=cfg["num_heads"],
                proj_type="perceptron").train()
    for p in net.vit.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, fused=True)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        o = [int(torch.randint(0, n - roi + 1, (1,), generator=g)) for n in img.shape[2:]]
        sl = (slice(None), slice(None)) + tuple(slice(a, a + roi) for a in o)
        with autocast_for("auto", torch.device("cpu")):
            logits = net(img[sl])
        loss = torch.nn.functional.cross_entropy(logits.float(), lab[sl[:1] + sl[2:]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            print(f"train step {step + 1}/{steps}: loss {loss.item():.4f}", file=sys.stderr, flush=True)
    return net.state_dict()


def save_weights(path: Path, size: str, weights: Optional[Path] = None, seed: int = 0) -> Path:
    """A MONAI ``UNETR`` state dict (seeded init, or ``weights``: a path or a state dict) saved to ``path``."""
    from monai.networks.nets import UNETR

    cfg = UNETR_SIZES[size]
    torch.manual_seed(seed)
    net = UNETR(in_channels=1, out_channels=K, img_size=(cfg["roi"],) * 3, feature_size=cfg["feature_size"],
                hidden_size=cfg["hidden_size"], mlp_dim=cfg["mlp_dim"], num_heads=cfg["num_heads"],
                proj_type="perceptron")
    if isinstance(weights, dict):
        net.load_state_dict(weights)
    elif weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    torch.save(net.state_dict(), path)
    return path


def monai_predict(ct: Path, weights: Path, out: Path, size: str, overlap: float, sw_batch_size: int = 4,
                  precision: str = "32") -> Path:
    """The MONAI tutorial pipeline; returns the written mask."""
    from monai.data import DataLoader, Dataset, decollate_batch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNETR
    from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd,
                                  SaveImaged, ScaleIntensityRanged, Spacingd)

    cfg = UNETR_SIZES[size]
    roi = (cfg["roi"],) * 3
    model = UNETR(in_channels=1, out_channels=K, img_size=roi, feature_size=cfg["feature_size"],
                  hidden_size=cfg["hidden_size"], mlp_dim=cfg["mlp_dim"], num_heads=cfg["num_heads"],
                  proj_type="perceptron")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    pre = Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"),
                   Orientationd(keys="image", axcodes="RAS"),
                   Spacingd(keys="image", pixdim=SPACING, mode="bilinear"),
                   ScaleIntensityRanged(keys="image", a_min=A_MIN, a_max=A_MAX, b_min=0.0, b_max=1.0, clip=True)])
    post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                    AsDiscreted(keys="pred", argmax=True),
                    SaveImaged(keys="pred", output_dir=str(out), output_postfix="seg", resample=False,
                               separate_folder=False, print_log=False, output_dtype=np.uint8)])
    loader = DataLoader(Dataset([{"image": str(ct)}], transform=pre), batch_size=1, num_workers=0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    for batch in loader:
        with torch.no_grad(), autocast:
            batch["pred"] = sliding_window_inference(batch["image"], roi, sw_batch_size, model, overlap=overlap,
                                                     mode="gaussian")
        for item in decollate_batch(batch):
            post(item)
    stem = ct.name.replace(".nii.gz", "")
    return out / f"{stem}_seg.nii.gz"


def vtk_predict(ct: Path, weights: Path, out: Path, size: str, overlap: float, sw_batch_size: int = 4,
                precision: str = "auto") -> Path:
    """``vtk seg predict`` in-process; returns the written mask."""
    from cli.main import main as vtk_main

    cfg = UNETR_SIZES[size]
    argv = ["seg", "predict", "--model", "unetr", "--pretrained", str(weights), "--input", str(ct), "--out",
            str(out), "--overlap", str(overlap), "--sw-batch-size", str(sw_batch_size), "--no-overlay",
            "--device", "cpu", "--precision", precision, "--roi", str(cfg["roi"]), "--num-classes", str(K),
            "--spacing", ",".join(map(str, SPACING)), "--a-min", str(A_MIN), "--a-max", str(A_MAX),
            "--model-arg", f"embed_dim={cfg['hidden_size']}", "--model-arg", f"num_heads={cfg['num_heads']}",
            "--model-arg", f"feature_size={cfg['feature_size']}"]
    rc = vtk_main(argv)
    if rc:
        raise RuntimeError(f"vtk seg predict exited {rc}")
    return out / ct.name.replace(".nii.gz", "_seg.nii.gz")


def _mask(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj).astype(np.int16).squeeze()


def run(slices: int, size: str, overlap: float, rounds: int, vtk_precision: str, monai_precision: str,
        work: Path, weights: Optional[Path] = None, sw_batch_size: int = 4, train_steps: int = 0
        ) -> Dict[str, object]:
    """Time both pipelines (median of ``rounds`` each, MONAI's first) and compare their masks (and each mask with
    the phantom's ground truth). With ``train_steps`` (and no ``weights``) the UNETR is first trained on the CT
    (:func:`train_weights`, not timed)."""
    shape = (128, 128, slices) if size == "tiny" else (512, 512, slices)
    ct = synth_ct(work / "ct.nii.gz", shape, label_path=work / "label.nii.gz")
    t = time.perf_counter()
    trained = train_weights(ct, work / "label.nii.gz", size, train_steps) if train_steps and weights is None else None
    train_s = time.perf_counter() - t
    w = save_weights(work / "unetr_monai.pt", size, trained if trained is not None else weights)
    times: Dict[str, list] = {"vtk": [], "monai": []}
    masks: Dict[str, np.ndarray] = {}
    fns = {"vtk": lambda: vtk_predict(ct, w, work / "vtk", size, overlap, sw_batch_size, vtk_precision),
           "monai": lambda: monai_predict(ct, w, work / "monai", size, overlap, sw_batch_size, monai_precision)}
    # MONAI's rounds first, on glibc's untouched heap (its dynamic mmap threshold; no mallopt call restores it once
    # vtk's command has set the retain policy for the rest of the process), then vtk's
    for name in ("monai", "vtk"):
        for _ in range(rounds):
            t = time.perf_counter()
            path = fns[name]()
            times[name].append(time.perf_counter() - t)
            masks[name] = _mask(path)
    from engine.context import resolve_precision

    resolved = resolve_precision(vtk_precision, torch.device("cpu"))  # 32 for auto on a CPU without native bf16
    vtk32 = (masks["vtk"] if resolved == "32"
             else _mask(vtk_predict(ct, w, work / "vtk32", size, overlap, sw_batch_size, "32")))
    if masks["vtk"].shape != masks["monai"].shape:
        raise RuntimeError(f"mask shapes differ: vtk {masks['vtk'].shape}, MONAI {masks['monai'].shape}")

    med = {k: statistics.median(v) for k, v in times.items()}
    truth = _mask(work / "label.nii.gz")
    return dict(shape=list(shape), size=size, overlap=overlap, rounds=rounds, train_steps=train_steps if
                trained is not None else 0, train_s=train_s,
                weights="trained here" if trained is not None else (str(weights) if weights else "seeded init"),
                differ_pct_vtk_vs_truth=float((masks["vtk"] != truth).mean() * 100),
                differ_pct_monai_vs_truth=float((masks["monai"] != truth).mean() * 100),
                vtk_precision=resolved,
                monai_precision=monai_precision, seconds=med, all_seconds=times,
                speedup=med["monai"] / med["vtk"],
                differ_pct=float((masks["vtk"] != masks["monai"]).mean() * 100),
                differ_pct_vtk32_vs_monai=float((vtk32 != masks["monai"]).mean() * 100),
                differ_pct_vtk_vs_vtk32=float((vtk32 != masks["vtk"]).mean() * 100),
                labels_vtk=int(len(np.unique(masks["vtk"]))), threads=torch.get_num_threads())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=100, help="axial slices of the 512x512 CT")
    p.add_argument("--size", choices=tuple(UNETR_SIZES), default="full",
                   help="full UNETR-B; reduced (ViT-Ti width, feature 8, same 96^3 windows, same 512x512 CT); tiny "
                        "(seconds: 128x128 CT, 32^3 windows)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--rounds", type=int, default=2, help="timed runs of each pipeline (MONAI's first)")
    p.add_argument("--precision", default="auto", help="vtk's --precision")
    p.add_argument("--monai-precision", choices=("32", "bf16"), default="32")
    p.add_argument("--weights", type=Path, default=None, help="a trained MONAI UNETR state dict (default: trained "
                   "here for --train-steps on the synthetic CT)")
    p.add_argument("--train-steps", type=int, default=150,
                   help="AdamW steps training the UNETR on the synthetic CT before timing (0: seeded, untrained)")
    p.add_argument("--sw-batch-size", type=int, default=4)
    p.add_argument("--json", type=Path, default=None, help="write the result here (atomically)")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.slices < 8 or not 0 <= a.overlap < 1 or a.train_steps < 0:
        p.error(f"--rounds >= 1, --slices >= 8, --overlap in [0, 1) and --train-steps >= 0 expected, got "
                f"{a.rounds}, {a.slices}, {a.overlap}, {a.train_steps}")
    with tempfile.TemporaryDirectory(prefix="vtk-seg-bench-") as tmp:
        res = run(a.slices, a.size, a.overlap, a.rounds, a.precision, a.monai_precision, Path(tmp), a.weights,
                  a.sw_batch_size, a.train_steps)
    print(json.dumps(res))
    print(f"vtk ({res['vtk_precision']}) {res['seconds']['vtk']:.1f} s, MONAI ({a.monai_precision}) "
          f"{res['seconds']['monai']:.1f} s: {res['speedup']:.2f}x; voxels differing {res['differ_pct']:.3f}% "
          f"(vtk fp32 vs MONAI {res['differ_pct_vtk32_vs_monai']:.3f}%, vtk {res['vtk_precision']} vs fp32 "
          f"{res['differ_pct_vtk_vs_vtk32']:.3f}%); vs the phantom's labels: vtk {res['differ_pct_vtk_vs_truth']:.3f}%, "
          f"MONAI {res['differ_pct_monai_vs_truth']:.3f}%; weights: {res['weights']}")
    if a.json:
        from engine.io import atomic_write_json

        atomic_write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
