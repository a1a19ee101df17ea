"""The segmentation half of ``vtk quickstart``: a small UNETR trained on the shipped Colin27 MRI, then evaluated.

UNETR (Hatamizadeh et al., arXiv:2103.10504) at the ``--preset quick`` size (32^3 ROI, patch 8, width 96, depth 4,
4 heads, feature size 8; 0.70M parameters) is trained on the one Colin27 training case shipped in
``medvit/assets/colin27`` (real T1 MRI, 4 AAL regions + background at 3 mm; see its README.md) with the
class-balanced recipe of the Colin27 proof in docs/medvit.md (``crop=classes`` with deep grey matter's crop
centres weighted 4x, class weights 3x on it, batch-wise Dice, no flips: the held-out case is the mirrored volume),
then scored on the held-out case by :func:`medvit.evaluate.evaluate_checkpoint` (Dice, HD95, NSD per region) and
drawn by :func:`medvit.inference.predict_files` (overlay PNG of the predicted regions on the scan).

Nothing is downloaded or installed. Example::

    >>> r = run_seg("quickstart/seg")
    >>> r.dice, r.overlay
    (0.7..., PosixPath('quickstart/seg/eval/img0002_overlay.png'))
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["COLIN27", "STEPS", "COLIN27_RECIPE", "SegQuickstart", "colin27_dir", "seg_config", "run_seg"]

COLIN27 = Path(__file__).resolve().parent / "assets" / "colin27"
STEPS = 600  # Colin27 proof (docs/medvit.md): mean Dice 0.73 (val) / 0.76 (eval) after 600 steps, 0.65 after 420
# The Colin27 proof's data options (docs/medvit.md): 3 mm grid, uint8 MRI window, no flips/rot90 (the held-out case
# is the mirrored volume), class-balanced crops and loss, so the smallest region (0.7 % of the volume) is learned.
COLIN27_RECIPE: Dict[str, Any] = dict(spacing=[3.0, 3.0, 3.0], a_min=0.0, a_max=255.0, flip_prob=0.0,
                                      rot90_prob=0.0, overlap=0.25, crop="classes", ratios=[1, 1, 1, 1, 4],
                                      class_weights=[1, 1, 1, 1, 3], dice_batch=True)


@dataclasses.dataclass
class SegQuickstart:
    """What :func:`run_seg` returns.

    Attributes:
        run: The run folder.
        dice: Mean Dice over the 4 regions of the held-out case (``vtk seg eval``'s figure).
        per_region: Region name -> Dice.
        metrics: ``run/eval/metrics.json`` (Dice, HD95, NSD per region).
        overlay: The overlay PNG of the held-out case.
        dice_plot: ``run/eval/dice_per_organ.png``.
        seconds: Wall time of training plus evaluation.
    """

    run: Path
    dice: float
    per_region: Dict[str, float]
    metrics: Path
    overlay: Path
    dice_plot: Path
    seconds: float


def colin27_dir() -> Path:
    """The shipped Colin27 dataset (a decathlon datalist: one training and one held-out case)."""
    from engine.errors import RunError

    if not (COLIN27 / "dataset_0.json").is_file():
        raise RunError(f"{COLIN27}: the shipped Colin27 data are missing (a broken install?)")
    return COLIN27


def seg_config(out: Path, steps: int = STEPS, device: str = "auto", precision: Optional[str] = None,
               quiet: bool = True):
    """The quickstart's :class:`~engine.config.TrainConfig`: ``--preset quick`` UNETR plus :data:`COLIN27_RECIPE`.

    Args:
        out: The run folder (must not hold a run).
        steps: Optimizer steps (one validation, and one checkpoint, at the end).
        device: ``auto``, ``cpu``, ``cuda``...
        precision: ``None`` keeps the config default (``auto``: bf16 where the hardware has it).
        quiet: Log lines instead of a progress bar.
    """
    from engine.config import config_from_cli, with_pretrained_and_preset
    from medvit.presets import preset_options
    from medvit.recipes import with_recipe_defaults

    steps = int(steps)
    given = dict(data="decathlon", data_dir=str(colin27_dir()), out=str(out), device=device, precision=precision,
                 max_steps=steps, val_every=steps, ckpt_every=steps, quiet=quiet, data_args=dict(COLIN27_RECIPE))
    given = with_pretrained_and_preset(given, None, "quick", None, lambda: preset_options("quick", "unetr"))
    return config_from_cli("seg", "unetr", with_recipe_defaults("unetr", given))


def run_seg(out: Path, steps: int = STEPS, device: str = "auto", precision: Optional[str] = None,
            quiet: bool = True) -> SegQuickstart:
    """Train the quickstart UNETR into ``out``, evaluate it on the held-out case and draw its overlay.

    Writes ``out/`` (a run folder: config.yaml, checkpoints, metrics.jsonl) and ``out/eval/`` (metrics.json,
    per_case.csv, dice_per_organ.png, ``img0002_seg.nii.gz`` in the scan's own grid and ``img0002_overlay.png``).
    """
    from engine import fit
    from engine.loop import raise_if_interrupted
    from medvit.data.layouts import resolve_splits
    from medvit.evaluate import evaluate_checkpoint
    from medvit.inference import Predictor, predict_files
    from medvit.metrics import write_reports
    from medvit.task import SegTask

    t0 = time.perf_counter()
    out = Path(out)
    result = fit(seg_config(out, steps, device, precision, quiet), SegTask())
    raise_if_interrupted(result)
    ev = evaluate_checkpoint(result.out, split="validation", device=device)
    target = Path(result.out) / "eval"
    write_reports(target, ev.rows, ev.summary, ev.names)
    _, val_items = resolve_splits("decathlon", colin27_dir())
    pred = Predictor(result.out, device)
    written = list(predict_files(pred, [val_items[0]["image"]], target, overlay=True))
    per_region = {n: float(ev.summary["per_organ"][n]["dice"] or 0.0) for n in ev.names}
    return SegQuickstart(Path(result.out), float(ev.summary["mean_dice"] or 0.0), per_region, target / "metrics.json",
                         written[0]["overlay"], target / "dice_per_organ.png", time.perf_counter() - t0)
