"""The run configuration: :class:`TrainConfig`, its YAML round trip and the CLI merge helper.

A run folder's ``config.yaml`` is the fully resolved :class:`TrainConfig`; loading it back gives an equal object,
so ``vtk seg train --config runs/x/config.yaml`` replays a run. :func:`config_from_cli` is the one place where a
pipeline command merges a config file with the options the user typed.

Example::

    >>> cfg = config_from_cli(task="seg", model="unetr", overrides={"max_steps": 200, "lr": None},
    ...                       config_file=None)
    >>> cfg.max_steps, cfg.lr        # None overrides are "not given" and keep the default
    (200, 0.0001)
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import yaml

from engine.choices import check_choice
from engine.errors import UserError
from engine.heap import CPU_HEAP_POLICIES

__all__ = [
    "with_pretrained_and_preset",
    "TrainConfig", "PRECISIONS", "OPTIMIZERS", "SCHEDULES", "config_from_cli", "parse_key_values",
    "default_out", "normalize_precision",
]

PRECISIONS = ("auto", "32", "bf16", "16-mixed")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("warmup-cosine", "poly", "constant")
_PRECISION_ALIASES = {"auto": "auto", "32": "32", "fp32": "32", "32-true": "32", "bf16": "bf16", "bf16-mixed": "bf16",
                      "16-mixed": "16-mixed", "fp16": "16-mixed", "16": "16-mixed"}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DICT_FIELDS = ("model_args", "data_args")
_FLOAT_FIELDS = ("lr", "weight_decay", "momentum", "clip_grad")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; dumped as the run folder's ``config.yaml``.

    Pipeline-specific values go in ``model_args`` and ``data_args``, never in new top-level fields.

    Args:
        task: Pipeline name (``seg``, ``video``); picks the Task when a checkpoint is reloaded.
        model: Registry name of the model.
        model_args: Overrides passed to ``create_model`` (``img_size``, ``num_classes``, ...).
        data: Dataset name (``btcv``, ``kinetics400``, ...).
        data_dir: Dataset folder.
        data_args: Pipeline-specific data options (crop size, frames, views, ...).
        out: Run folder; ``None`` means ``runs/<task>-<model>-<timestamp>``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Under torchrun each rank uses ``cuda:LOCAL_RANK``.
        precision: ``auto`` (default: bf16 autocast where the device computes bf16 natively -- CUDA GPUs with bf16,
            CPUs with avx512_bf16 or AMX -- else fp32; see :func:`engine.context.resolve_precision`), ``32``,
            ``bf16`` (bf16 autocast, CPU too) or ``16-mixed`` (fp16 autocast + GradScaler).
        compile: Wrap the model in ``torch.compile``.
        batch_size: Global batch per optimizer step, over all ranks and accumulation steps.
        grad_accum: Micro-batches accumulated per optimizer step.
        clip_grad: Max global gradient L2 norm; ``None`` disables clipping.
        optimizer: ``adamw`` or ``sgd``. Biases and norm weights (1-D parameters) get no weight decay.
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum (ignored by AdamW).
        schedule: ``warmup-cosine``, ``poly`` (power 0.9) or ``constant``; all start with linear warmup.
        warmup_steps: Linear warmup length in optimizer steps.
        max_steps: Total optimizer steps.
        val_every: Validate every N steps (0: only at the end).
        ckpt_every: Save ``checkpoints/last`` every N steps (0: only at the end).
        log_every: Log the training loss every N steps.
        num_workers: DataLoader workers per rank.
        seed: Seeds model init, data order, per-sample augmentation and dropout.
        quiet: Plain log lines instead of a progress bar (automatic when stdout is not a terminal).
        resume: A run folder to continue from ``checkpoints/last``.
        keep_checkpoints: Also keep the weights of the last N periodic saves as ``checkpoints/step-NNNNNNN``
            (0: only ``last`` and ``best``).
        cpu_heap: On the CPU, ``retain`` (default: the C heap keeps the memory a step frees for the next one,
            so steps do not fault their tensors in again; glibc only, see :mod:`engine.heap`) or ``system``
            (glibc's thresholds: freed blocks go back to the kernel).
        dist_timeout: Seconds a collective may wait under torchrun before the run fails with one line (a rank
            that died or got stuck can then never hang the others forever).
    """

    task: str = ""
    model: str = ""
    model_args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    data: str = ""
    data_dir: Optional[str] = None
    data_args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    out: Optional[str] = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    batch_size: int = 2
    grad_accum: int = 1
    clip_grad: Optional[float] = None
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    momentum: float = 0.9
    schedule: str = "warmup-cosine"
    warmup_steps: int = 0
    max_steps: int = 1000
    val_every: int = 500
    ckpt_every: int = 500
    log_every: int = 10
    num_workers: int = 2
    seed: int = 0
    quiet: bool = False
    resume: Optional[str] = None
    keep_checkpoints: int = 0
    cpu_heap: str = "retain"
    dist_timeout: float = 600.0

    def validate(self) -> "TrainConfig":
        """Normalise and check every field; raise :class:`UserError` naming the option and its value."""
        self.precision = normalize_precision(self.precision)
        _check_choice("device", self.device, None, pattern=_DEVICE_RE)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("cpu_heap", self.cpu_heap, CPU_HEAP_POLICIES)
        for name in ("batch_size", "grad_accum", "max_steps", "log_every"):
            _check_number(name, getattr(self, name), minimum=1, integer=True)
        for name in ("warmup_steps", "val_every", "ckpt_every", "num_workers", "seed", "keep_checkpoints"):
            _check_number(name, getattr(self, name), minimum=0, integer=True)
        _check_number("lr", self.lr, minimum=0.0, strict=True)
        _check_number("dist_timeout", self.dist_timeout, minimum=0.0, strict=True)
        _check_number("weight_decay", self.weight_decay, minimum=0.0)
        _check_number("momentum", self.momentum, minimum=0.0)
        if self.clip_grad is not None:
            _check_number("clip_grad", self.clip_grad, minimum=0.0, strict=True)
        for name in _DICT_FIELDS:
            if not isinstance(getattr(self, name), dict):
                raise UserError(f"{name}: expected a mapping of key: value, got {getattr(self, name)!r}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """Plain ``dict`` of the fields (YAML/JSON safe)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """YAML text of the fields, in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a mapping; unknown keys raise :class:`UserError` naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{source}: unknown config key(s) {', '.join(unknown)}")
        values = dict(data)
        if "precision" in values:
            values["precision"] = str(values["precision"])
        for name in _FLOAT_FIELDS:  # YAML 1.1 reads "1e-4" (no dot) as a string
            if isinstance(values.get(name), str):
                values[name] = _to_float(values[name])
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: os.PathLike | str) -> "TrainConfig":
        """Load a ``config.yaml`` written by :meth:`to_yaml` (a run folder is accepted too)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: no such config file") from None
        except UnicodeDecodeError as e:  # a binary file (a checkpoint, an image) given to --config
            raise UserError(f"{path}: not a text YAML config (binary data at byte {e.start})") from None
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{path}: cannot read config ({' '.join(str(e).split())[:200]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a YAML mapping of config keys")
        return cls.from_dict(data, source=str(path))


def _to_float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # validate() reports it with the option name


def _parse_scalar(text: str) -> Any:
    """A YAML scalar/list, with ``1e-4``-style floats read as floats (YAML 1.1 needs a dot)."""
    value = yaml.safe_load(text) if text.strip() else None
    return _to_float(value) if isinstance(value, str) else value


def normalize_precision(value: Any) -> str:
    """Map ``32``/``fp32``/``bf16``/``bf16-mixed``/``16-mixed``/``fp16`` to the canonical names."""
    key = str(value).strip().lower()
    if key not in _PRECISION_ALIASES:
        raise UserError(f"precision: {value!r} is not one of {', '.join(PRECISIONS)}")
    return _PRECISION_ALIASES[key]


def _check_choice(name: str, value: Any, choices: Optional[Sequence[str]], pattern: Optional[re.Pattern] = None):
    if pattern is not None:
        if not pattern.match(str(value)):
            raise UserError(f"{name}: {value!r} is not one of auto, cpu, cuda, cuda:N")
        return
    check_choice(name, value, choices)


def _check_number(name: str, value: Any, minimum: float, strict: bool = False, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise UserError(f"{name}: expected {kind}, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name}: {value!r} is not a finite number")
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise UserError(f"{name}: {value!r} must be {bound}")


def default_out(cfg: TrainConfig, root: str = "runs") -> str:
    """``runs/<task>-<model>-<UTC timestamp>``, with a ``-N`` suffix when that folder already exists."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{cfg.task or 'run'}-{cfg.model or 'model'}-{stamp}"
    out, n = base, 1
    while out.exists():
        out, n = Path(f"{base}-{n}"), n + 1
    return str(out)


def parse_key_values(items: Optional[Sequence[str]], option: str = "--model-arg") -> Dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` CLI options; values are YAML scalars (``depth=2``, ``img_size=[96,96,96]``)."""
    result: Dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option}: expected KEY=VALUE, got {item!r}")
        try:
            result[key.strip()] = _parse_scalar(text)
        except yaml.YAMLError:
            raise UserError(f"{option}: cannot parse the value in {item!r}") from None
    return result


def config_from_cli(task: str, model: Optional[str], overrides: Mapping[str, Any],
                    config_file: Optional[os.PathLike | str] = None) -> TrainConfig:
    """Merge a previous run's ``config.yaml`` with the options given on the command line.

    Precedence: explicit CLI options (non-``None`` values in ``overrides``) > ``config_file`` > defaults.
    ``model_args`` and ``data_args`` are merged key by key. A replayed config gets a fresh ``out`` and no
    ``resume`` unless those are given. ``overrides={"resume": RUN}`` without a config file starts from
    ``RUN/config.yaml`` and writes into ``RUN``.

    Args:
        task: The pipeline's task name; a config file of another task is rejected.
        model: ``--model``, or ``None`` when not given.
        overrides: Field name -> value from the CLI; ``None`` means "not given".
        config_file: ``--config``: a ``config.yaml`` or a run folder.

    Returns:
        The validated :class:`TrainConfig`.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"config_from_cli: unknown TrainConfig field(s) {unknown}; allowed: {sorted(names)}")
    resume = given.get("resume")
    if config_file is None and resume is not None:
        config_file = Path(resume) / "config.yaml"
        if not Path(config_file).is_file():
            raise UserError(f"{resume}: not a run folder (no config.yaml)")
    cfg = _base_config(task, config_file, resuming=resume is not None)
    if model is not None:
        cfg.model = model
    for key, value in given.items():
        if key in _DICT_FIELDS:
            value = {**getattr(cfg, key), **dict(value)}
        setattr(cfg, key, value)
    if resume is not None and "out" not in given:
        cfg.out = str(resume)
    if not cfg.model:
        raise UserError("--model is required (or --config FILE / --resume RUN)")
    return cfg.validate()


def _base_config(task: str, config_file: Optional[os.PathLike | str], resuming: bool) -> TrainConfig:
    if config_file is None:
        return TrainConfig(task=task)
    cfg = TrainConfig.from_yaml(config_file)
    if cfg.task and task and cfg.task != task:
        raise UserError(f"{config_file}: config is for task {cfg.task!r}, not {task!r}")
    cfg.task = task or cfg.task
    if not resuming:
        cfg.out, cfg.resume = None, None
    return cfg


def with_pretrained_and_preset(given: Mapping[str, Any], pretrained: Optional[os.PathLike | str],
                               preset: Optional[str], resume: Optional[os.PathLike | str],
                               preset_options: Callable[[], Mapping[str, Any]]) -> Dict[str, Any]:
    """``--pretrained`` into ``model_args`` and a ``--preset``'s options under the explicit ones.

    Args:
        given: CLI options (``None`` = not given; ``model_args``/``data_args`` dicts or ``None``).
        pretrained: the ``--pretrained`` file, if any.
        preset: the ``--preset`` name, if any.
        resume: the ``--resume`` run; a preset or weights file cannot be combined with it.
        preset_options: returns the preset's options (the pipeline's ``presets.preset_options`` bound to the
            preset and model); called only when ``preset`` is given.

    Returns:
        ``given`` with the preset's values where no option was given; explicit dict keys win over the preset's.
    """
    if resume is not None and (pretrained is not None or preset is not None):
        raise UserError("--pretrained/--preset: not with --resume (the run already holds its weights and config)")
    out = dict(given)
    if pretrained is not None:
        out["model_args"] = {**(out.get("model_args") or {}), "pretrained": str(pretrained)}
    if preset is not None:
        for key, value in preset_options().items():
            if isinstance(value, dict):
                out[key] = {**value, **(out.get(key) or {})}
            elif out.get(key) is None:
                out[key] = value
    return out
