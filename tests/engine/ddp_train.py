"""torchrun entry for the DDP tests: ``ddp_train.py JSON`` trains the toy task once per ``[out, overrides, stop_at]``
entry of the JSON list (several runs share one torchrun start-up); ``stop_at`` (or null) stops after that step."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # checkout

import torch  # noqa: E402

from engine import fit  # noqa: E402
from engine_tasks import ToyTask, base_config  # noqa: E402

__all__ = []

if __name__ == "__main__":
    torch.set_num_threads(1)
    for out, overrides, stop_at in json.loads(sys.argv[1]):
        fit(base_config(out, **overrides), ToyTask(), should_stop=lambda step, k=stop_at: step == k)
