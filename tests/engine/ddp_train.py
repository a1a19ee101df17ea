"""torchrun entry for the DDP tests: ``ddp_train.py JSON`` trains the toy task once per ``[out, overrides, stop_at]``
entry of the JSON list (several runs share one torchrun start-up); ``stop_at`` (or null) stops after that step.
The test puts the checkout and ``tests/`` (for ``engine_tasks``) on ``PYTHONPATH``."""

import json
import sys

import torch

from engine import fit
from engine_tasks import ToyTask, base_config

__all__ = []

if __name__ == "__main__":
    torch.set_num_threads(1)
    for out, overrides, stop_at in json.loads(sys.argv[1]):
        fit(base_config(out, **overrides), ToyTask(), should_stop=lambda step, k=stop_at: step == k)
