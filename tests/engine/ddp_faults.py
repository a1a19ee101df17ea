"""torchrun entry for the DDP fault tests: ``ddp_faults.py OUT N_VAL`` trains the toy task with ``N_VAL``
validation samples (fewer than ranks gives a rank an empty shard); each rank writes its final metrics to
``OUT-rank<R>.json``."""

import json
import os
import sys

import torch

from engine import fit
from engine_tasks import ToyDataset, ToyTask, base_config


class SmallValTask(ToyTask):
    def __init__(self, n_val: int) -> None:
        super().__init__()
        self.n_val = n_val

    def build_datasets(self, cfg):
        train, _ = super().build_datasets(cfg)
        return train, ToyDataset(self.n_val, seed=7, noise=0.0)

    def validate(self, model, dataset, ctx):
        if not list(ctx.shard_indices(len(dataset))):  # an empty shard reports no keys at all, as pipelines do
            return ctx.reduce_mean({}, {})
        return super().validate(model, dataset, ctx)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, n_val = sys.argv[1], int(sys.argv[2])
    cfg = base_config(out, model_args={"dropout": 0.0}, max_steps=4, val_every=2, ckpt_every=2, dist_timeout=60)
    result = fit(cfg, SmallValTask(n_val))
    with open(f"{out}-rank{os.environ['RANK']}.json", "w") as f:
        json.dump(result.metrics, f)
