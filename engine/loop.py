"""The training loop: :func:`fit` runs a :class:`~engine.task.Task` under a :class:`~engine.config.TrainConfig`.

One optimizer step = ``grad_accum`` micro-batches per rank (DDP gradient sync on the last one only), the
mean loss all-reduced for logging and checked for NaN/inf, optional unscale + clipping, optimizer, GradScaler
and scheduler steps. Then, as due: a log record, validation (RNG-isolated, so it never shifts the training
randomness), ``checkpoints/last`` and ``checkpoints/best``. ``SIGTERM``/``SIGINT`` or ``should_stop`` end the
run cleanly after saving ``last``; ``resume`` continues bit-for-bit from it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch
from torch import nn

from engine import checkpoint as ckpt
from engine.config import TrainConfig, default_out
from engine.context import Context, resolve_precision
from engine.heap import set_cpu_heap
from engine.data import EpochBatchSampler, SeededDataset, make_train_loader, micro_batch_size, steps_per_epoch
from engine.distributed import DistInfo, all_gather_object, all_reduce_sum, barrier, broadcast_object, setup, teardown
from engine.errors import Interrupted, RunError, UserError, VtkError
from engine.io import clean_stale_temporaries
from engine.lock import RunLock
from engine.metrics import RunLogger
from engine.optim import build_optimizer, build_scheduler, current_lr
from engine.progress import TrainProgress
from engine.seeding import get_rng_state, isolated_rng, rank_seed, seed_everything, set_rng_state

__all__ = ["fit", "FitResult", "move_to_device", "raise_if_interrupted"]


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        out: The run folder.
        step: Optimizer steps done.
        best: Best value of ``task.monitor`` (``None`` without validation).
        metrics: The last validation metrics.
        stopped: ``True`` when the run ended early (signal or ``should_stop``); resume it with ``resume=out``.
    """

    out: Path
    step: int
    best: Optional[float]
    metrics: Dict[str, float]
    stopped: bool = False
    signal: Optional[int] = None


def raise_if_interrupted(result: FitResult) -> FitResult:
    """Raise :class:`~engine.errors.Interrupted` (exit ``128 + signal``, e.g. 143 for SIGTERM) when a signal ended
    the run, so a scheduler sees a killed job as killed; the run was saved and can be resumed. Returns ``result``."""
    if result.signal is not None:
        name = signal.Signals(result.signal).name
        raise Interrupted(f"{result.out}: stopped by {name} at step {result.step} after saving; resume with "
                          f"--resume {result.out}", exit_code=128 + result.signal)
    return result


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in nested dicts, lists and tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device, non_blocking) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


def fit(cfg: TrainConfig, task: Any, *, should_stop: Optional[Callable[[int], bool]] = None) -> FitResult:
    """Train ``task`` as configured by ``cfg``.

    Args:
        cfg: The run configuration (validated here; ``cfg`` itself is not modified).
        task: A :class:`~engine.task.Task`.
        should_stop: Called with each finished step; ``True`` saves ``checkpoints/last`` and returns early.

    Returns:
        A :class:`FitResult`.

    Raises:
        UserError: Bad configuration, existing run folder, unreadable checkpoint.
        RunError: Non-finite loss (the last good checkpoint is kept).
    """
    cfg = copy.deepcopy(cfg).validate()
    dist = setup(cfg.device, timeout_s=cfg.dist_timeout)
    trainer = None
    try:
        trainer = _Trainer(cfg, task, dist, should_stop)
        return trainer.run()
    except RuntimeError as e:
        if dist.distributed and not isinstance(e, VtkError) and _is_collective_failure(e):
            raise RunError(f"rank {dist.rank}: a collective failed ({_first_line(e)}): another rank failed or is "
                           f"stuck (see its output); --dist-timeout is {cfg.dist_timeout:g} s") from e
        raise
    finally:
        if trainer is not None:
            trainer.release()
        teardown(dist)


def _is_collective_failure(e: BaseException) -> bool:
    text = str(e).lower()
    return any(w in text for w in ("timed out", "timeout", "connection closed", "connection reset", "gloo", "nccl"))


def _first_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:160]


class _StopFlag:
    """Set by SIGTERM/SIGINT while :func:`fit` runs (main thread only); the loop stops after the step."""

    def __init__(self) -> None:
        self.set = False
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.set, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Trainer:
    """State and steps of one :func:`fit` call (split out so every method stays short)."""

    def __init__(self, cfg: TrainConfig, task: Any, dist: DistInfo, should_stop: Optional[Callable[[int], bool]]):
        if getattr(task, "monitor_mode", "max") not in ("max", "min"):
            raise ValueError(f"task.monitor_mode must be 'max' or 'min', got {task.monitor_mode!r}")
        resolve = getattr(task, "resolve_config", None)
        if resolve is not None:  # the task fills its defaults before config.yaml is written (on every rank)
            cfg = (resolve(cfg) or cfg).validate()
        self.cfg, self.task, self.dist, self.should_stop = cfg, task, dist, should_stop
        self._lock: Optional[RunLock] = None
        self.reused = False
        self.micro = micro_batch_size(cfg.batch_size, dist.world_size, cfg.grad_accum)
        self.out = self._prepare_out()
        try:
            self._build()
        except BaseException:
            self.release()  # a failed start leaves the folder unlocked and reusable
            raise

    def _build(self) -> None:
        cfg, task, dist = self.cfg, self.task, self.dist
        self.ckpt_dir = self.out / "checkpoints"
        self.step, self.best, self.best_step, self.last_metrics = 0, None, 0, {}
        self.window: Dict[str, float] = {}
        seed_everything(cfg.seed)
        self._note(f"building {cfg.model or 'the model'} on {dist.device} (precision "
                   f"{resolve_precision(cfg.precision, dist.device)}{self._apply_cpu_heap()})")
        self.raw = task.build_model(cfg).to(dist.device)
        self._note(f"preparing the {cfg.data or 'training'} datasets")
        self.train_ds, self.val_ds = task.build_datasets(cfg)
        self.spe = steps_per_epoch(len(self.train_ds), cfg.batch_size, source=f"{cfg.data or 'training'} dataset")
        self.seeded = SeededDataset(self.train_ds, cfg.seed)
        self.optimizer = build_optimizer(self.raw, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.precision == "16-mixed")
        if cfg.resume:
            self._restore(Path(cfg.resume))
        else:
            seed_everything(rank_seed(cfg.seed, dist.rank))
        self.model = self._wrap(self.raw)
        purge = self.step if cfg.resume else (0 if self.reused else None)
        self.logger = RunLogger(self.out, dist.is_main, purge_step=purge)
        self.progress = TrainProgress(cfg.max_steps, self.step, dist.is_main, cfg.quiet, dist.device, cfg.log_every)
        self.ctx = Context(dist, cfg.precision, log_fn=self.logger.log, progress_fn=self.progress.wrap, cfg=cfg)

    # ----------------------------------------------------------------------------------------------- setup
    def _apply_cpu_heap(self) -> str:
        """``cfg.cpu_heap`` for a CPU run (see :mod:`engine.heap`); what to add to the start-up note."""
        if self.dist.device.type != "cpu":
            return ""
        applied = set_cpu_heap(self.cfg.cpu_heap)
        return f", heap {self.cfg.cpu_heap}" + ("" if applied else " (not glibc: unchanged)")

    def _prepare_out(self) -> Path:
        cfg = self.cfg
        if cfg.out is None:
            cfg.out = cfg.resume if cfg.resume else default_out(cfg)
        cfg.out = broadcast_object(str(cfg.out))
        out, error = Path(cfg.out), None
        if self.dist.is_main:
            try:
                self._claim_folder(out)
            except (UserError, OSError) as e:
                self.release()
                error = f"{out}: cannot create the run folder ({e})" if isinstance(e, OSError) else str(e)
        error, self.reused = broadcast_object((error, self.reused))  # every rank fails together, never waits
        if error:
            raise UserError(error)
        return out

    def _claim_folder(self, out: Path) -> None:
        """Rank 0: lock the folder, finish interrupted saves, remove stale temporaries, write ``config.yaml``.

        A folder whose earlier start failed before its first checkpoint is reused (there is nothing to lose); one
        with a checkpoint is refused unless resumed.
        """
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: --out is an existing file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(out).acquire()
        ckpt_dir = out / "checkpoints"
        for line in ckpt.recover_checkpoints(ckpt_dir):
            self._note(f"{ckpt_dir}: {line}")
        clean_stale_temporaries(out)
        has_last = ckpt.checkpoint_paths(ckpt_dir, "last")[0].is_file()
        if self.cfg.resume and not has_last:
            raise UserError(f"{out}: no checkpoint to resume from yet (the run stopped before its first save); "
                            "start it again without --resume: the folder is reused")
        if not self.cfg.resume and (out / "config.yaml").exists():
            if has_last or ckpt.checkpoint_paths(ckpt_dir, "best")[0].is_file():
                raise UserError(f"{out}: run folder already exists and has checkpoints; resume it with "
                                f"--resume {out} or pick another --out")
            self.reused = True
            self._note(f"{out}: reusing the folder of a start that made no checkpoint")
        ckpt.atomic_write_text(out / "config.yaml", self.cfg.to_yaml())

    def _note(self, text: str) -> None:
        """A one-line status message from rank 0 (what is being prepared before the first step line)."""
        if self.dist.is_main:
            print(f"vtk: {text}", flush=True)

    def release(self) -> None:
        """Release the run-folder lock (rank 0)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.dist.distributed:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            unused = bool(getattr(self.task, "find_unused_parameters", False))
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def _restore(self, run: Path) -> None:
        wpath, spath = ckpt.checkpoint_paths(run / "checkpoints", "last")
        state = ckpt.load_state(spath)
        meta_step = ckpt.read_metadata(wpath).get("step")
        if meta_step != str(state["step"]):
            raise UserError(f"{wpath}: weights are from step {meta_step} but {spath.name} is from step "
                            f"{state['step']} (interrupted save?)")
        self.raw.load_state_dict(ckpt.load_weights(wpath))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.window = int(state["step"]), dict(state["window"])
        self.best, self.best_step = state["best"]["value"], int(state["best"]["step"])
        self._restore_best(run / "checkpoints")
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # a different world size cannot replay dropout exactly; data order is still exact
            seed_everything(rank_seed(self.cfg.seed + self.step, self.dist.rank))

    def _restore_best(self, folder: Path) -> None:
        """``last`` is saved before validation, so the newest best metric may only be in ``best.state.pt``."""
        bpath = ckpt.checkpoint_paths(folder, "best")[1]
        if not bpath.is_file():
            return
        best = ckpt.load_state(bpath).get("best", {})
        if best.get("value") is not None and int(best.get("step", 0)) > self.best_step and best["step"] <= self.step:
            self.best, self.best_step = best["value"], int(best["step"])

    # ------------------------------------------------------------------------------------------------ loop
    def run(self) -> FitResult:
        stopped = False
        with _StopFlag() as flag, self.progress, contextlib.closing(self.logger):
            self._flag = flag
            self.progress.message(f"training from step {self.step} to {self.cfg.max_steps}; loading the first batch "
                                  f"({self.cfg.num_workers} workers)")
            while self.step < self.cfg.max_steps and not stopped:
                epoch, pos = divmod(self.step, self.spe)
                sampler = EpochBatchSampler(len(self.train_ds), self.cfg.batch_size, self.dist.world_size,
                                            self.dist.rank, self.cfg.grad_accum, self.cfg.seed, epoch, start=pos)
                loader = make_train_loader(self.seeded, sampler, self.cfg.num_workers,
                                           getattr(self.task, "collate", None), self.dist.device.type == "cuda")
                it = iter(loader)
                for _ in range(pos, self.spe):
                    stopped = self._train_step(it, epoch, flag)
                    self._after_step(stopped)
                    if stopped or self.step >= self.cfg.max_steps:
                        break
                del it, loader
        barrier()
        if stopped:
            self.progress.message(f"stopped at step {self.step}; resume with --resume {self.out}")
        return FitResult(self.out, self.step, self.best, self.last_metrics, stopped, signal=self._signum)

    def _train_step(self, it: Iterator[Any], epoch: int, flag: _StopFlag) -> bool:
        """One optimizer step; returns whether the run must stop after it."""
        cfg, ctx = self.cfg, self.ctx
        ctx.step, ctx.epoch = self.step + 1, epoch
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=self.dist.device, dtype=torch.float32)
        extras: Dict[str, float] = {}
        for a in range(cfg.grad_accum):
            batch = move_to_device(next(it), self.dist.device, non_blocking=self.dist.device.type == "cuda")
            no_sync = self.dist.distributed and a < cfg.grad_accum - 1
            with self.model.no_sync() if no_sync else contextlib.nullcontext():
                with ctx.autocast():
                    loss, logs = self.task.training_step(self.model, batch, ctx)
                self.scaler.scale(loss.float() / cfg.grad_accum).backward()
            loss_sum += loss.detach().float()
            for k, v in (logs or {}).items():
                extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum
        stop = bool(flag.set or (self.should_stop is not None and self.should_stop(self.step + 1)))
        stats = torch.stack([loss_sum / cfg.grad_accum, torch.tensor(float(stop), device=loss_sum.device)])
        loss_value, stop = self._reduce_step(stats)
        lr = current_lr(self.optimizer)
        grad_norm = self._optimizer_step()
        self.step += 1
        self._accumulate(loss_value, extras, grad_norm, time.perf_counter() - t0)
        self.progress.update(self.step, loss_value, lr, cfg.batch_size / max(1e-9, time.perf_counter() - t0))
        self.window["lr"] = lr
        return stop

    @property
    def _signum(self) -> Optional[int]:
        flag = getattr(self, "_flag", None)
        return flag.signum if flag is not None else None

    def _reduce_step(self, stats: torch.Tensor) -> Tuple[float, bool]:
        all_reduce_sum(stats)
        loss_value = stats[0].item() / self.dist.world_size
        if not math.isfinite(loss_value):
            last = ckpt.checkpoint_paths(self.ckpt_dir, "last")[0]
            where = str(last) if last.exists() else "none saved yet"
            raise RunError(f"non-finite loss ({loss_value}) at step {self.step + 1}; last good checkpoint: {where}")
        return loss_value, bool(stats[1].item() > 0)

    def _optimizer_step(self) -> Optional[float]:
        grad_norm = None
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def _accumulate(self, loss: float, extras: Dict[str, float], grad_norm: Optional[float], dt: float) -> None:
        w = self.window
        for key, value in {"train/loss": loss, "time": dt, **{f"train/{k}": v for k, v in extras.items()}}.items():
            w[key] = w.get(key, 0.0) + value
        if grad_norm is not None:
            w["grad_norm"] = w.get("grad_norm", 0.0) + grad_norm
        w["n"] = w.get("n", 0.0) + 1

    # ------------------------------------------------------------------------------------- log / val / ckpt
    def _after_step(self, stopping: bool) -> None:
        """Log, save ``last`` when due, then validate and save ``best``: a failing validation can never cost the
        checkpoint due at this step."""
        cfg, step = self.cfg, self.step
        final = step >= cfg.max_steps
        if step % cfg.log_every == 0 or final or stopping:
            self._log_window()
        periodic = bool(cfg.ckpt_every and step % cfg.ckpt_every == 0)
        if final or stopping or periodic:
            self._save(last=True, best=False, snapshot=periodic or final)
        if self.val_ds is not None and not stopping and (final or (cfg.val_every and step % cfg.val_every == 0)):
            if self._validate():
                self._save(last=False, best=True)

    def _log_window(self) -> None:
        w, self.window = self.window, {}
        n = w.pop("n", 0.0)
        if n == 0:
            return
        lr, dt = w.pop("lr", float("nan")), w.pop("time", 0.0)
        keys = sorted(w)
        t = torch.tensor([w[k] / n for k in keys], dtype=torch.float64)
        if self.dist.distributed:
            t = all_reduce_sum(t.to(self.dist.device)).cpu() / self.dist.world_size
        record = {"epoch": (self.step - 1) // self.spe, **dict(zip(keys, t.tolist())), "lr": lr,
                  "samples_per_s": n * self.cfg.batch_size / max(dt, 1e-9)}
        self.logger.log(self.step, record)

    def _validate(self) -> bool:
        self.raw.eval()
        try:
            with torch.no_grad(), isolated_rng():
                raw = self.task.validate(self.raw, self.val_ds, self.ctx)
        finally:
            self.raw.train()
        metrics = {(k if "/" in k else f"val/{k}"): float(v) for k, v in raw.items()}
        self.last_metrics = metrics
        self.logger.log(self.step, metrics)
        self.progress.message(f"step {self.step}: " + " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if self.task.monitor not in metrics:
            raise RunError(f"task.monitor {self.task.monitor!r} is not among the validation metrics "
                           f"{sorted(metrics)}")
        value = metrics[self.task.monitor]
        if not math.isfinite(value):
            return False
        if self.best is not None and not (value > self.best if self.task.monitor_mode == "max" else value < self.best):
            return False
        self.best, self.best_step = value, self.step
        return True

    def _training_state(self) -> Dict[str, Any]:
        return {"step": self.step, "epoch": self.step // self.spe, "position": self.step % self.spe,
                "steps_per_epoch": self.spe, "world_size": self.dist.world_size,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "best": {"value": self.best, "step": self.best_step},
                "monitor": getattr(self.task, "monitor", ""), "window": dict(self.window),
                "rng": all_gather_object(get_rng_state())}

    def _save(self, last: bool, best: bool, snapshot: bool = False) -> None:
        state = self._training_state()  # collective (gathers every rank's RNG)
        if not self.dist.is_main:
            return
        weights = ckpt.serialize_weights(self.raw, self.cfg, self.step)
        if last:
            ckpt.save_checkpoint(self.ckpt_dir, "last", weights, ckpt.serialize_state(state))
            if snapshot and self.cfg.keep_checkpoints:
                self._snapshot(weights)
        if best:  # weights and the best metric only: no optimizer state (half the size of a UNETR pair or less)
            slim = {k: v for k, v in state.items() if k not in _RESUME_ONLY}
            ckpt.save_checkpoint(self.ckpt_dir, "best", weights, ckpt.serialize_state(slim))

    def _snapshot(self, weights: bytes) -> None:
        """``checkpoints/step-NNNNNNN.safetensors``, keeping the newest ``keep_checkpoints`` of them."""
        ckpt.save_weights(self.ckpt_dir / f"step-{self.step:07d}.safetensors", weights)
        for old in sorted(self.ckpt_dir.glob("step-*.safetensors"))[:-self.cfg.keep_checkpoints]:
            old.unlink()


_RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng", "window")
