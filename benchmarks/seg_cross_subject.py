"""A real cross-subject proof: train on Colin27, evaluate on the MNI152 ICBM 2009a template (or the reverse).

Two differently acquired T1 brains, both in MNI space:

* Colin27 (one subject scanned 27 times; Holmes et al., J Comput Assist Tomogr 22(2), 1998), shipped reduced in
  ``medvit/assets/colin27/`` with the AAL atlas (Tzourio-Mazoyer et al., NeuroImage 15(1), 2002), which was
  drawn on it;
* the MNI152 ICBM 2009a nonlinear symmetric template (Fonov et al., NeuroImage 54(1), 2011; an average of 152
  subjects, skull-stripped) that the ``nilearn`` wheel ships as
  ``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``.

``build`` transfers the AAL regions to the template by the two affines (world coordinates, nearest neighbour),
keeps them only inside the template's brain (its non-zero voxels), merges them into the same 4 coarse regions as
the Colin27 proof (:data:`benchmarks.seg_colin27_reduce.GROUPS`) and reduces the template to 3 mm exactly as
Colin27 was (3x3x3 block mean, majority vote of the one-hot regions). The result is written to
``medvit/assets/mni152/`` with a decathlon datalist whose ``training`` case is Colin27 (skull-stripped with a
mask made from its own labels, :func:`colin_brain_mask`, since the template is skull-stripped) and whose ``validation``
case is the template (``dataset_0.json``), and the reverse in ``mni2colin/dataset_0.json``.

``run`` trains the quick-preset UNETR (``medvit/presets.py``: patch 8, width 96, depth 4; 64^3 ROI here) on one
brain with ``vtk seg train`` and evaluates it on the other with ``vtk seg eval`` (Dice, HD95 in mm, NSD at 2 mm),
with and without TTA (``--tta-axes all``: the run trains without flips, so ``--tta`` alone mirrors nothing) and
largest-component postprocessing (``--postprocess lcc``), and prints a Markdown table.

Usage::

    python benchmarks/seg_cross_subject.py build --src /work/shared/data/colin27      # writes medvit/assets/mni152
    nice python benchmarks/seg_cross_subject.py run --out runs/cross --steps 600      # train + eval + table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a source checkout

from benchmarks._common import run_vtk  # noqa: E402
from engine.io import atomic_write_json  # noqa: E402

ASSET = ROOT / "medvit" / "assets" / "mni152"
TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"

# the Colin27 proof's training recipe (docs/medvit.md) with MR z-score normalisation, a 64^3 ROI at 3 mm (192 mm:
# the whole brain in one window, so the network sees left from right and where the cerebellum is) and nnU-Net-style
# augmentation (medvit.data.transforms.augmentations: rotation/scaling/translation, noise, blur, brightness, gamma)
TRAIN_ARGS = [
    "--preset", "quick", "--data", "decathlon", "--img-size", "64", "--data-arg", "spacing=[3,3,3]",
    "--data-arg", "normalization=mr", "--data-arg", "flip_prob=0", "--data-arg", "rot90_prob=0",
    "--data-arg", "overlap=0.25", "--data-arg", "crop=classes", "--data-arg", "ratios=[1,1,1,1,4]",
    "--data-arg", "class_weights=[1,1,1,1,3]", "--data-arg", "dice_batch=true",
    "--data-arg", "affine_prob=0.3", "--data-arg", "gamma_prob=0.3", "--data-arg", "contrast_prob=0.3",
    "--data-arg", "blur_prob=0.2", "--data-arg", "noise_prob=0.1", "--batch-size", "1",
    "--num-samples", "2", "--lr", "1e-3", "--warmup-steps", "5", "--device", "cpu", "--num-workers", "0",
    "--cache", "--quiet",
]


def template_path() -> Path:
    """The MNI152 2009a T1 inside the installed nilearn wheel."""
    try:
        import nilearn
    except ImportError:
        sys.exit("build needs nilearn (pip install nilearn): it ships the MNI152 2009a template")
    p = Path(nilearn.__file__).parent / "datasets" / "data" / TEMPLATE
    if not p.is_file():
        sys.exit(f"{p}: not in this nilearn wheel")
    return p


def transfer_labels(aal_img, target_img) -> np.ndarray:
    """AAL ids resampled into ``target_img``'s grid through both affines (nearest neighbour; 0 outside AAL)."""
    aal = np.asarray(aal_img.dataobj).astype(np.int64)
    shape = target_img.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ target_img.affine[:3, :3].T + target_img.affine[:3, 3]
    inv = np.linalg.inv(aal_img.affine)
    src = np.rint(world @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.array(aal.shape)), axis=1)
    out = np.zeros(len(src), np.int64)
    out[inside] = aal[tuple(src[inside].T)]
    return out.reshape(shape)


def colin_brain_mask(labels: np.ndarray) -> np.ndarray:
    """Colin27's brain from its own AAL regions: closed (3 x 3^3), holes filled, dilated by one voxel.

    The template comes skull-stripped; Colin27 has skull and scalp. Stripping the training brain with a mask made
    from its own labels uses nothing of the test brain (its image is untouched)."""
    from scipy import ndimage as ndi

    m = ndi.binary_closing(labels > 0, structure=np.ones((3, 3, 3)), iterations=3, border_value=0)
    return ndi.binary_dilation(ndi.binary_fill_holes(m), iterations=1)


def build(src: Path, out: Path = ASSET, k: int = 3) -> None:
    """Write the reduced template, its transferred labels and the two datalists into ``out``."""
    import nibabel as nib

    from benchmarks.seg_colin27_reduce import GROUPS, _pool, group_map

    t1 = nib.load(str(template_path()))
    aal = nib.load(str(src / "aal.nii.gz"))
    data = np.asarray(t1.dataobj, np.float32)
    groups = group_map(src / "aal.nii.txt")[transfer_labels(aal, t1)]
    groups[data <= 0] = 0  # the template is skull-stripped: no region outside its brain
    img = _pool(data[None], k)[0].round().clamp(0, 255).byte().numpy()
    onehot = np.stack([groups == g for g in range(len(GROUPS))]).astype(np.float32)
    lab = _pool(onehot, k).argmax(0).byte().numpy()
    scale = np.diag([k, k, k, 1.0])
    scale[:3, 3] = (k - 1) / 2.0
    affine = t1.affine @ scale
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(img), affine), str(out / "imagesTr" / "mni152.nii.gz"))
    nib.save(nib.Nifti1Image(np.ascontiguousarray(lab), affine), str(out / "labelsTr" / "mni152.nii.gz"))
    colin_img = nib.load(str(out.parent / "colin27" / "imagesTr" / "img0001.nii.gz"))
    colin_lab = np.asarray(nib.load(str(out.parent / "colin27" / "labelsTr" / "label0001.nii.gz")).dataobj)
    stripped = (np.asarray(colin_img.dataobj) * colin_brain_mask(colin_lab)).astype(np.uint8)
    nib.save(nib.Nifti1Image(stripped, colin_img.affine), str(out / "imagesTr" / "colin27_brain.nii.gz"))
    colin = {"image": "imagesTr/colin27_brain.nii.gz", "label": "../colin27/labelsTr/label0001.nii.gz"}
    mni = {"image": "imagesTr/mni152.nii.gz", "label": "labelsTr/mni152.nii.gz"}
    base = {"labels": {str(i): n for i, n in enumerate(GROUPS)}, "modality": {"0": "MRI T1"},
            "tensorImageSize": "3D", "numTraining": 1, "numTest": 0, "test": []}
    (out / "dataset_0.json").write_text(json.dumps({
        **base, "name": "colin27-to-mni152", "description": "train Colin27, validate on the MNI152 2009a template",
        "training": [colin], "validation": [mni]}, indent=4))
    (out / "mni2colin").mkdir(exist_ok=True)
    up = {k: "../" + v for k, v in colin.items()}, {k: "../" + v for k, v in mni.items()}
    (out / "mni2colin" / "dataset_0.json").write_text(json.dumps({
        **base, "name": "mni152-to-colin27", "description": "train the MNI152 2009a template, validate on Colin27",
        "training": [up[1]], "validation": [up[0]]}, indent=4))
    counts = np.bincount(lab.ravel(), minlength=len(GROUPS))
    print(f"wrote {out}: shape {img.shape}, voxels per group {dict(zip(GROUPS, counts.tolist()))}")


def eval_variants() -> List[Dict[str, List[str]]]:
    """Without and with TTA, each without and with largest-component postprocessing (``vtk seg eval`` computes
    both postprocessing variants; its default, ``--postprocess auto``, reports the better one, recorded in each
    row's ``auto_picks``)."""
    return [{"name": "no TTA, no postprocessing", "args": ["--postprocess", "none"]},
            {"name": "largest component", "args": ["--postprocess", "lcc"]},
            # the run trains without flips, so plain --tta mirrors nothing (medvit.inference.mirror_axes); these
            # rows force all 8 flips to show what mirroring does to lateralised labels
            {"name": "TTA, all 8 flips forced", "args": ["--tta-axes", "all", "--postprocess", "none"]},
            {"name": "TTA all flips + largest component", "args": ["--tta-axes", "all", "--postprocess", "lcc"]}]


def run(out: Path, steps: int, direction: str, model: str, seed: int, extra: List[str]) -> List[dict]:
    """Train on one brain, evaluate on the other; returns one row per inference variant."""
    data_dir = ASSET if direction == "colin2mni" else ASSET / "mni2colin"
    run_dir = out / f"{direction}-{model}-s{steps}-seed{seed}"
    log = out / f"{run_dir.name}.log"
    t0 = time.time()
    if not (run_dir / "checkpoints").is_dir():
        run_vtk(["seg", "train", "--model", model, *TRAIN_ARGS, "--data-dir", str(data_dir), "--max-steps",
                 str(steps), "--val-every", str(steps), "--ckpt-every", str(steps), "--seed", str(seed), "--out",
                 str(run_dir), *extra], log)
    train_s = time.time() - t0
    rows = []
    for v in eval_variants():
        t1 = time.time()
        ev = run_dir / ("eval-" + "-".join(a.strip("-") for a in v["args"]))
        run_vtk(["seg", "eval", "--checkpoint", str(run_dir), "--device", "cpu", "--out", str(ev), *v["args"]], log)
        summary = json.loads((ev / "metrics.json").read_text())
        summary = summary.get("summary", summary)
        picks = summary.get("postprocessing", {}).get("better")
        rows.append({"direction": direction, "model": model, "steps": steps, "seed": seed, "variant": v["name"],
                     "auto_picks": picks,
                     "train_s": round(train_s, 1), "eval_s": round(time.time() - t1, 1),
                     "dice": summary["mean_dice"], "hd95": summary["mean_hd95"], "nsd": summary["mean_nsd"],
                     "per_organ": summary["per_organ"], "run": str(run_dir)})
    return rows


def table(rows: List[dict]) -> str:
    """Markdown table of the rows (mean and per-region Dice)."""
    names = list(rows[0]["per_organ"]) if rows else []
    head = "| train -> test | inference | mean Dice | mean HD95 (mm) | mean NSD (2 mm) | " + \
        " | ".join(f"Dice {n}" for n in names) + " |"
    lines = [head, "|" + "---|" * (5 + len(names))]
    for r in rows:
        d = {"colin2mni": "Colin27 -> MNI152", "mni2colin": "MNI152 -> Colin27"}[r["direction"]]
        per = " | ".join(_f(r["per_organ"][n]["dice"]) for n in names)
        lines.append(f"| {d} | {r['variant']} | {_f(r['dice'])} | {_f(r['hd95'], 2)} | {_f(r['nsd'])} | {per} |")
    return "\n".join(lines)


def _f(v: Optional[float], digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write medvit/assets/mni152 from nilearn's template and the AAL atlas")
    b.add_argument("--src", type=Path, default=Path("/work/shared/data/colin27"), help="folder with aal.nii.gz")
    b.add_argument("--out", type=Path, default=ASSET)
    r = sub.add_parser("run", help="train on one brain, evaluate on the other, print the table")
    r.add_argument("--out", type=Path, default=ROOT / "runs" / "cross-subject")
    r.add_argument("--steps", type=int, default=600)
    r.add_argument("--direction", choices=("colin2mni", "mni2colin", "both"), default="colin2mni")
    r.add_argument("--model", default="unetr")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", type=Path, help="also write the rows as JSON")
    r.add_argument("extra", nargs="*", help="more `vtk seg train` options (after --)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.src, args.out)
        return
    directions = ("colin2mni", "mni2colin") if args.direction == "both" else (args.direction,)
    try:
        rows = [row for d in directions for row in run(args.out, args.steps, d, args.model, args.seed, args.extra)]
    except RuntimeError as e:  # a vtk command failed: its log's path and tail
        sys.exit(str(e))
    print(table(rows))
    if args.json:
        atomic_write_json(args.json, rows, indent=1)


if __name__ == "__main__":
    main()
