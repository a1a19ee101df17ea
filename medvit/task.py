"""The segmentation ``Task`` handed to ``engine.fit``: model, datasets, DiceCE loss, sliding-window validation.

Loss is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True)`` as in UNETR (Hatamizadeh et
al., arXiv:2103.10504). Validation runs sliding-window inference (3D models) or slice-by-slice inference (2D
models: TransUNet, arXiv:2102.04306; MedT, arXiv:2102.10662) over whole validation volumes and reports the mean
Dice over organs (``val/dice``, which picks ``checkpoints/best``) and one ``val/dice/<organ>`` per organ. An organ
absent from both the ground truth and the prediction of a case is not counted for that case.

Pipeline options live in ``cfg.data_args`` (``roi``, ``spacing``, ``a_min``, ``a_max``, ``num_samples``,
``cache``, ``spatial_dims``, ``sw_batch_size``, ``overlap``, ``names``, ``crop``, ``ratios``) so predict/eval
replay them; ``class_weights`` and ``dice_batch`` set the loss's per-class weights and batch-wise Dice.
``folds``/``fold`` train one fold of nnU-Net's cross-validation split (:mod:`medvit.data.folds`; the split is
written to the run folder as ``splits.json``); ``normalization`` (``auto``, ``ct``, ``mr``, ``window``, ``none``)
picks the intensity normalisation (:mod:`medvit.data.transforms`), ``auto`` from the dataset's modality, and
``ct`` stores the training foreground's statistics as ``intensity_stats``.
:meth:`SegTask.resolve_config` fills them (:mod:`medvit.recipes`); the steps read them from ``cfg`` / ``ctx.cfg``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from engine.errors import UserError
from engine.pretrained import build_run_model

__all__ = ["SegTask", "dataset_defaults", "resolve_training_options", "run_split"]


class SegTask:
    """Segmentation training job (see the module docstring)."""

    monitor = "val/dice"
    monitor_mode = "max"

    def __init__(self) -> None:
        self._loss: Optional[nn.Module] = None

    def resolve_config(self, cfg):
        """Fill the model- and data-dependent defaults (:func:`medvit.recipes.resolve_seg_config`); idempotent.

        Called by the engine before it writes ``config.yaml``, so predict/eval replay the filled values.
        """
        from medvit.recipes import resolve_seg_config

        return resolve_training_options(resolve_seg_config(dataset_defaults(cfg)))

    def build_model(self, cfg) -> nn.Module:
        import medvit

        try:
            model = build_run_model(medvit.create_model, cfg)  # model_args.pretrained on a fresh start only
        except ValueError as e:  # a bad model name or override value is a user error (exit 2)
            raise UserError(f"--model {cfg.model}: {e}") from e
        dims = int(getattr(model, "spatial_dims", cfg.data_args.get("spatial_dims", 3)))
        if dims != int(cfg.data_args.get("spatial_dims", dims)):
            raise UserError(f"--model {cfg.model}: a {dims}D model, but the data were prepared for "
                            f"{cfg.data_args.get('spatial_dims')}D (check its registry meta spatial_dims)")
        return model

    def build_datasets(self, cfg):
        from medvit.data.layouts import SYNAPSE_FROM_BTCV

        da = cfg.data_args
        if cfg.data == "folder2d" and int(da.get("spatial_dims", 2)) == 3:
            raise UserError(f"{cfg.data_dir}: --data folder2d holds 2D images; --model {cfg.model} is a 3D model "
                            "(use transunet or medt)")
        if da.get("normalization", "window") != "window" and int(da.get("spatial_dims", 3)) == 2:
            raise UserError(f"--data-arg normalization={da['normalization']}: 3D models only (2D models use the "
                            "a_min/a_max window)")
        train_items, val_items = run_split(cfg, write=True)
        label_map = SYNAPSE_FROM_BTCV if cfg.data == "synapse" else None
        num_classes = _num_classes(cfg)
        if cfg.data == "folder2d":
            return self._folder2d(train_items, val_items, da, num_classes)
        preflight(train_items + val_items, num_classes, label_map)
        if int(da.get("spatial_dims", 3)) == 2:
            return self._slices(train_items, val_items, da, label_map)
        return self._volumes(cfg, train_items, val_items, label_map, num_classes)

    def _volumes(self, cfg, train_items, val_items, label_map, num_classes):
        from medvit.data.datasets import VolumeDataset
        from medvit.data.transforms import RECIPE_3D, LoadNiftid, train_transforms_3d, val_transforms_3d

        da = cfg.data_args
        recipe = {k: da[k] for k in RECIPE_3D if k in da}
        loader = LoadNiftid(label_map, num_classes)
        cache = bool(da.get("cache", False))
        train = VolumeDataset(train_items, train_transforms_3d(da["roi"], loader, **recipe), cache, cfg.num_workers)
        val = VolumeDataset(val_items, val_transforms_3d(loader, **recipe), cache, cfg.num_workers)
        return train, val

    def _slices(self, train_items, val_items, da, label_map):
        from medvit.data.datasets import SliceDataset, load_slices_3d

        kw = dict(img_size=da["roi"], a_min=da.get("a_min", -125.0), a_max=da.get("a_max", 275.0),
                  label_map=label_map)
        return SliceDataset(load_slices_3d(train_items, **kw)), SliceDataset(load_slices_3d(val_items, **kw),
                                                                            train=False)

    def _folder2d(self, train_items, val_items, da, num_classes: Optional[int] = None):
        from medvit.data.datasets import SliceDataset, load_folder2d

        train = SliceDataset(load_folder2d(train_items, da["roi"], num_classes), hflip_only=True)
        return train, SliceDataset(load_folder2d(val_items, da["roi"], num_classes), train=False)

    def collate(self, samples: list) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flatten RandCropByPosNegLabel's crop lists; returns image (N, C, *S) float and label (N, 1, *S) long."""
        flat: List[Any] = []
        for s in samples:
            flat.extend(s if isinstance(s, list) else [s])
        if isinstance(flat[0], dict):
            images = [torch.as_tensor(d["image"]).float() for d in flat]
            labels = [torch.as_tensor(d["label"]).long() for d in flat]
        else:
            images, labels = [img for img, _ in flat], [lab[None].long() for _, lab in flat]
        return torch.stack(images), torch.stack(labels)

    def training_step(self, model, batch, ctx) -> Tuple[torch.Tensor, Dict[str, float]]:
        """DiceCE loss of one batch; the engine runs this under ``ctx.autocast()``, the loss is taken in fp32."""
        from monai.losses import DiceCELoss

        if self._loss is None:
            self._loss = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, **self._loss_args(ctx.cfg))
        image, label = batch
        logits = model(image)
        loss = self._loss(logits.float(), label)
        return loss, {}

    def _loss_args(self, cfg) -> Dict[str, Any]:
        """``class_weights`` (one per class; weights CE and Dice terms) and ``dice_batch`` from the data options."""
        da, k = cfg.data_args, _num_classes(cfg)
        out: Dict[str, Any] = {"batch": bool(da.get("dice_batch", False))}
        weights = da.get("class_weights")
        if weights is not None:
            if len(weights) != k or min(weights) < 0:
                raise UserError(f"--data-arg class_weights={list(weights)}: need {k} values >= 0 "
                                "(one per class, background first)")
            out["weight"] = torch.tensor([float(w) for w in weights])
        return out

    def validate(self, model, dataset, ctx) -> Dict[str, float]:
        """Mean Dice per organ over validation volumes (sliding window for 3D, slice by slice for 2D)."""
        from medvit.metrics import case_metrics

        da = ctx.cfg.data_args
        names = list(da.get("names") or [])
        sums: Dict[str, float] = {}
        counts: Dict[str, float] = {}
        k = _num_classes(ctx.cfg)
        for i in ctx.shard_indices(len(dataset)):
            pred, gt = self._predict_item(model, dataset[i], ctx, da)
            d = case_metrics(pred, gt, k, spacing=(1.0,) * gt.ndim, surface=False)["dice"]
            for c in range(1, k):
                key = f"val/dice/{names[c] if c < len(names) else c}"
                counted = not np.isnan(d[c - 1])
                sums[key] = sums.get(key, 0.0) + (float(d[c - 1]) if counted else 0.0)
                counts[key] = counts.get(key, 0.0) + float(counted)
        per_organ = ctx.reduce_mean(sums, counts)
        valid = [v for v in per_organ.values() if not np.isnan(v)]
        return {"dice": float(np.mean(valid)) if valid else 0.0, **per_organ}

    def _predict_item(self, model, item, ctx, da: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
        from medvit.inference import slice_probs, sliding_window_probs

        amp = ctx.autocast
        if isinstance(item, dict):  # 3D: image (1, D, H, W), label (1, D, H, W)
            image = torch.as_tensor(item["image"]).float()[None].to(ctx.device)
            with amp():
                probs = sliding_window_probs(model, image, da["roi"], int(da.get("sw_batch_size", 2)),
                                             float(da.get("overlap", 0.5)), "gaussian")
            gt = torch.as_tensor(item["label"])[0].long().numpy()
            return probs.argmax(1)[0].cpu().numpy(), gt
        stack, gt = item  # (Z, C, H, W), (Z, H, W)
        with amp():
            probs = slice_probs(model, stack.to(ctx.device), int(da.get("sw_batch_size", 2)) * 8)
        return probs.argmax(1).cpu().numpy(), gt.numpy()


def _num_classes(cfg) -> int:
    """Classes including background (set by :meth:`SegTask.resolve_config`; 14, BTCV's, for a bare config)."""
    return int(cfg.model_args.get("num_classes", 14))


def preflight(items: List[dict], num_classes: int, label_map: Optional[dict]) -> None:
    """Read every image/label pair once before training: forged headers, missing, truncated, NaN, non-3D,
    shape/affine mismatch, float or out-of-range labels (:func:`medvit.data.check.check_label`) all raise
    ``UserError`` naming the file."""
    from medvit.data.check import check_label
    from medvit.data.layouts import BTCV_LABELS
    from medvit.io import check_pair, check_volume_header, read_nifti

    for item in items:  # every header first: a forged one is refused before any volume is read
        for key in ("image", "label"):
            if key in item:
                check_volume_header(item[key])
    file_classes = len(BTCV_LABELS) if label_map is not None else None
    for item in items:
        img = read_nifti(item["image"])
        if "label" not in item:
            continue
        lab = read_nifti(item["label"])
        check_pair(img, lab)
        check_label(lab, num_classes, label_map, file_classes)


def dataset_defaults(cfg):
    """Defaults a dataset kind implies: ``--data nnunet`` trains with ``normalization=auto`` (from its
    ``channel_names``), as nnU-Net does; explicit options win. Returns a copy."""
    import copy

    if cfg.data != "nnunet" or "normalization" in cfg.data_args:
        return cfg
    cfg = copy.copy(cfg)
    cfg.data_args = {**cfg.data_args, "normalization": "auto"}
    return cfg


def resolve_training_options(cfg):
    """Check ``folds``/``fold``, resolve ``normalization=auto`` from the modality and compute the CT scheme's
    foreground statistics over the training cases (once: kept when present, so resume and replays agree)."""
    import copy

    from medvit.data.transforms import resolve_normalization

    cfg = copy.copy(cfg)
    cfg.data_args = da = dict(cfg.data_args)
    if "folds" in da or "fold" in da:
        folds, fold = _int_arg(da, "folds", 5), _int_arg(da, "fold", 0)
        if folds < 2 or not 0 <= fold < folds:
            raise UserError(f"--folds {folds} --fold {fold}: need folds >= 2 and 0 <= fold < folds")
        da.update(folds=folds, fold=fold)
    if "normalization" not in da:
        return cfg
    if da["normalization"] == "auto":
        from medvit.data.fingerprint import dataset_modality

        da["normalization"] = resolve_normalization("auto", dataset_modality(cfg.data, cfg.data_dir))
    else:
        resolve_normalization(da["normalization"], None)  # the choice check
    if da["normalization"] == "ct" and not da.get("intensity_stats"):
        da["intensity_stats"] = _foreground_stats(cfg)
    return cfg


def _int_arg(da: Dict[str, Any], key: str, default: int) -> int:
    try:
        return int(da.get(key, default))
    except (TypeError, ValueError):
        raise UserError(f"--{key} {da.get(key)!r}: expected an integer") from None


def _foreground_stats(cfg) -> Dict[str, float]:
    """nnU-Net's CT statistics over the foreground of the training cases of this run's split."""
    from medvit.data.fingerprint import case_fingerprint
    from medvit.data.layouts import SYNAPSE_FROM_BTCV
    from medvit.data.transforms import foreground_stats

    train_items, _ = run_split(cfg)
    label_map = SYNAPSE_FROM_BTCV if cfg.data == "synapse" else None
    values = [case_fingerprint(item, label_map=label_map)[1] for item in train_items]
    values = np.concatenate(values) if values else np.zeros((0,))
    if values.size == 0:
        raise UserError(f"{cfg.data_dir}: normalization=ct needs labelled foreground voxels in the training cases")
    return foreground_stats(values)


def run_split(cfg, write: bool = False) -> Tuple[List[dict], List[dict]]:
    """Training and validation items of the run: the layout's split, or fold ``fold`` of ``folds`` over all its
    labelled cases (written to ``RUN/splits.json`` with ``write``)."""
    from medvit.data.folds import fold_items, write_splits
    from medvit.data.layouts import resolve_splits

    da = cfg.data_args
    train_items, val_items = resolve_splits(cfg.data, cfg.data_dir, float(da.get("val_fraction", 0.2)))
    if "folds" not in da:
        return train_items, val_items
    pool, seen = [], set()
    for item in train_items + val_items:
        if item["image"] not in seen:
            seen.add(item["image"])
            pool.append(item)
    train_items, val_items, splits = fold_items(pool, int(da["folds"]), int(da.get("fold", 0)))
    if write and cfg.out:
        write_splits(cfg.out, splits)
    return train_items, val_items
