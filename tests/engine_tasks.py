"""A tiny Task for the engine tests: a 2-layer MLP with dropout on a synthetic regression set whose samples get
random augmentation noise from torch *and* numpy (so per-sample seeding is exercised)."""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from engine import TrainConfig

__all__ = ["ToyDataset", "ToyTask", "mlp", "base_config", "train_losses", "DIM"]

DIM = 8
torch.set_num_threads(1)  # tiny ops: threads only add contention on the shared 2-core test machine


class ToyDataset(Dataset):
    """``n`` fixed inputs/targets; every fetch adds fresh random noise (torch + numpy)."""

    def __init__(self, n: int, seed: int, noise: float) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, DIM, generator=g)
        w = torch.randn(DIM, 2, generator=g)
        self.y = torch.tanh(self.x @ w)
        self.noise = noise
        self.fetched: List[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        self.fetched.append(i)
        x = self.x[i]
        if self.noise:
            x = x + self.noise * torch.randn(DIM) + float(np.random.uniform(-self.noise, self.noise))
        return {"x": x, "y": self.y[i]}


def mlp(dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 2))


class ToyTask:
    """Engine Task over :class:`ToyDataset`; ``nan_at`` makes the loss NaN at that (1-based) step."""

    monitor = "val/mse"
    monitor_mode = "min"

    def __init__(self, nan_at: Optional[int] = None) -> None:
        self.nan_at = nan_at
        self.autocast_dtypes: List[torch.dtype] = []
        self.train_ds: Optional[ToyDataset] = None

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        model = mlp(float(cfg.model_args.get("dropout", 0.0)))
        self.initial_state = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    def build_datasets(self, cfg: TrainConfig) -> Tuple[Dataset, Optional[Dataset]]:
        noise = float(cfg.data_args.get("noise", 0.1))
        self.train_ds = ToyDataset(int(cfg.data_args.get("n", 40)), seed=123, noise=noise)
        return self.train_ds, ToyDataset(12, seed=7, noise=0.0)

    def training_step(self, model: nn.Module, batch: Dict[str, torch.Tensor], ctx: Any):
        out = model(batch["x"])  # (B, 2)
        self.autocast_dtypes.append(out.dtype)
        loss = nn.functional.mse_loss(out.float(), batch["y"])
        if self.nan_at is not None and ctx.step == self.nan_at:
            loss = loss * math.nan
        return loss, {"mae": (out.float() - batch["y"]).abs().mean().item()}

    def validate(self, model: nn.Module, dataset: Dataset, ctx: Any) -> Dict[str, float]:
        sq = 0.0
        idx = list(ctx.shard_indices(len(dataset)))
        for i in idx:
            s = dataset[i]
            with ctx.autocast():
                out = model(s["x"][None].to(ctx.device))
            sq += nn.functional.mse_loss(out.float()[0].cpu(), s["y"], reduction="sum").item() / 2
        return ctx.reduce_mean({"mse": sq}, {"mse": float(len(idx))})


def base_config(out, **kw: Any) -> TrainConfig:
    """A tiny, fast CPU config; ``kw`` overrides fields."""
    values = dict(task="toy", model="mlp", model_args={"dropout": 0.2}, data="toy", data_args={"n": 40},
                  out=str(out), device="cpu", batch_size=8, lr=1e-2, optimizer="adamw", schedule="warmup-cosine",
                  warmup_steps=2, max_steps=12, val_every=5, ckpt_every=5, log_every=1, num_workers=0, seed=3,
                  quiet=True)
    values.update(kw)
    return TrainConfig(**values)


def train_losses(run) -> Dict[int, float]:
    """``{step: train/loss}`` from a run folder's metrics.jsonl."""
    records = [json.loads(line) for line in open(f"{run}/metrics.jsonl") if line.strip()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
