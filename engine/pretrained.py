"""Fine-tuning from a released weights file (``--pretrained FILE``) without the run ever depending on the file.

A run started with ``--pretrained FILE`` keeps the file's absolute path and SHA-256 in
``model_args["pretrained"]`` / ``model_args["pretrained_sha256"]`` (``config.yaml``, for provenance), loads it
once when the model is first built, prints the load report and saves it as ``RUN/pretrained_report.json``
(loaded, adapted, new and ignored tensors). From then on the initial weights live in the run's checkpoints: a
``--resume`` and every rebuild from a run checkpoint (``eval``, ``predict``, ``export``) build the model *without*
``pretrained`` (:func:`model_overrides`), so moving or deleting the file never breaks the run. A ``--config``
replay is a new run and loads the file again, after checking that its SHA-256 is still the recorded one.

Example::

    >>> cfg.model_args["pretrained"] = "vit_base_patch16_224.pth"
    >>> record_pretrained(cfg)                     # in Task.resolve_config: absolute path + sha256
    >>> model = build_run_model(videovit.create_model, cfg)   # in Task.build_model: loads it, writes the report
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from engine.errors import UserError

__all__ = ["PRETRAINED", "PRETRAINED_SHA256", "REPORT_NAME", "sha256_file", "record_pretrained", "model_overrides",
           "pretrained_path", "build_run_model", "create_with_report", "write_report", "print_report", "WeightsRun",
           "weights_run", "save_weights_run", "describe", "convert_weights"]

PRETRAINED = "pretrained"  # model_args key: absolute path of the weights file the run started from
PRETRAINED_SHA256 = "pretrained_sha256"  # model_args key: its SHA-256 (provenance, checked on replays)
REPORT_NAME = "pretrained_report.json"
_KEYS = (PRETRAINED, PRETRAINED_SHA256)


_DIGESTS: Dict[Tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest: resolve_config runs repeatedly


def sha256_file(path: os.PathLike | str, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks (cached per path, size and modification time)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _check_file(path: Path, option: str = "--pretrained") -> Path:
    if not path.is_file():
        raise UserError(f"{option} {path}: no such weights file")
    return path.resolve()


def record_pretrained(cfg: Any) -> Any:
    """Record the absolute path and SHA-256 of ``cfg.model_args["pretrained"]`` in place; returns ``cfg``.

    Called by the pipelines' ``resolve_config`` before ``config.yaml`` is written. A resumed run is left as it is
    (the file is not read: the weights are in the run's checkpoints).

    Raises:
        UserError: The file does not exist, or its SHA-256 differs from the one already recorded (a replayed
            ``config.yaml`` whose file has changed since).
    """
    ma = cfg.model_args
    if cfg.resume or not ma.get(PRETRAINED):
        return cfg
    path = _check_file(Path(str(ma[PRETRAINED])).expanduser())
    digest = sha256_file(path)
    recorded = ma.get(PRETRAINED_SHA256)
    if recorded and recorded != digest:
        raise UserError(f"--pretrained {path}: SHA-256 {digest[:12]}... differs from the {recorded[:12]}... "
                        "recorded in the config (the file changed since that run)")
    ma[PRETRAINED], ma[PRETRAINED_SHA256] = str(path), digest
    return cfg


def model_overrides(model_args: Mapping[str, Any]) -> Dict[str, Any]:
    """``model_args`` without the provenance keys: what ``create_model`` gets when rebuilding a run's model."""
    return {k: v for k, v in model_args.items() if k not in _KEYS}


def pretrained_path(cfg: Any) -> Optional[str]:
    """The weights file to load when building ``cfg``'s model: ``None`` on resume (the checkpoint has them)."""
    if cfg.resume:
        return None
    value = cfg.model_args.get(PRETRAINED)
    return str(value) if value else None


def create_with_report(factory: Callable[..., Any], name: str, overrides: Mapping[str, Any],
                       pretrained: Optional[Any]) -> Tuple[Any, Any]:
    """``factory(name, pretrained=pretrained, **overrides)`` and the last :class:`~backbones._builder.LoadReport`
    made while building it (``None`` without ``pretrained``)."""
    from backbones._builder import collect_load_reports

    if pretrained is None:
        return factory(name, **overrides), None
    with collect_load_reports() as reports:
        model = factory(name, pretrained=pretrained, **overrides)
    return model, (reports[-1] if reports else None)


def print_report(report: Any, quiet: bool = False) -> None:
    """Print the load report (one line plus adaptations, new and ignored tensors) unless ``quiet``."""
    if report is not None and not quiet:
        print(f"vtk: pretrained: {report}", flush=True)


def write_report(folder: os.PathLike | str, report: Any, sha256: Optional[str] = None) -> Path:
    """Write ``folder/pretrained_report.json`` (:meth:`LoadReport.to_dict`, plus the file's SHA-256)."""
    from engine.io import atomic_write_json

    record = report.to_dict()
    if sha256:
        record["sha256"] = sha256
    return atomic_write_json(Path(folder) / REPORT_NAME, record)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def build_run_model(factory: Callable[..., Any], cfg: Any) -> Any:
    """Build ``cfg``'s model for :func:`engine.fit`: with its ``pretrained`` file on a fresh start (report printed
    and saved in ``cfg.out``), without it on resume.

    Args:
        factory: ``create_model(name, pretrained=..., **overrides)`` of the pipeline's registry.
        cfg: The resolved :class:`~engine.config.TrainConfig` (``cfg.out`` is set by the engine before it builds).
    """
    model, report = create_with_report(factory, cfg.model, model_overrides(cfg.model_args), pretrained_path(cfg))
    if report is not None and _is_main():
        print_report(report)  # also with --quiet (which only turns the progress bar into log lines)
        if cfg.out:
            write_report(cfg.out, report, cfg.model_args.get(PRETRAINED_SHA256))
    return model


# ------------------------------------------------------------------------------------- runs from weights files
@dataclasses.dataclass
class WeightsRun:
    """A released weights file loaded into a vtk model, standing in for a run: :func:`engine.load_run` accepts it
    (it returns ``(cfg, state_dict)``), so every ``Predictor`` that takes a run folder takes it too.

    Attributes:
        path: The weights file (``os.fspath(run)`` gives it).
        cfg: A :class:`~engine.config.TrainConfig` of no run: ``task``, ``model``, ``model_args`` (with the file's
            path and SHA-256) and the test protocol in ``data_args``.
        model: The model with the file's weights, in ``eval()`` mode.
        report: The :class:`~backbones._builder.LoadReport`.
    """

    path: Path
    cfg: Any
    model: Any
    report: Any

    @property
    def state_dict(self) -> Dict[str, Any]:
        return self.model.state_dict()

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def _classes_in_file(report: Any) -> Optional[int]:
    """Rows of the checkpoint's classifier weight that did not fit the model (its class count), else ``None``."""
    for key, shape in (report.classifier_shapes or {}).items():
        if key.endswith("weight") and shape:
            return int(shape[0])
    return None


def _create(factory: Callable[..., Any], name: str, overrides: Dict[str, Any], path: Path) -> Tuple[Any, Any]:
    try:
        return create_with_report(factory, name, overrides, str(path))
    except ValueError as e:  # an override the constructor refuses
        raise UserError(f"--model {name}: {e}") from None


def weights_run(factory: Callable[..., Any], cfg: Any, path: os.PathLike | str) -> WeightsRun:
    """Load a weights file of any supported format into ``cfg``'s model; the file's class count wins.

    Args:
        factory: The pipeline registry's ``create_model``.
        cfg: ``task``, ``model`` (a registry name) and ``model_args`` (overrides), ``data_args`` (the protocol).
            ``model_args`` gains the ``num_classes`` of the file's classifier when it differs from the model's
            default (unless ``num_classes`` was given), the file's absolute path and its SHA-256.
        path: The weights file.

    Raises:
        UserError: No such file, an unknown format, or weights that leave part of the model at its random init
            (evaluation needs a complete model; fine-tune with ``--pretrained`` on ``train`` instead).
    """
    path = _check_file(Path(path).expanduser())
    overrides = model_overrides(cfg.model_args)
    model, report = _create(factory, cfg.model, overrides, path)
    classes = _classes_in_file(report)
    if classes is not None and "num_classes" not in overrides:
        overrides["num_classes"] = classes
        model, report = _create(factory, cfg.model, overrides, path)
    if report.kept_init:
        shown = ", ".join(report.kept_init[:3]) + (", ..." if len(report.kept_init) > 3 else "")
        raise UserError(f"{path}: {len(report.kept_init)} weights of {cfg.model} are not in the file ({shown}); "
                        "evaluating needs a complete model (fine-tune it with train --pretrained instead)")
    cfg.model_args = {**overrides, PRETRAINED: str(path), PRETRAINED_SHA256: sha256_file(path)}
    return WeightsRun(path, cfg, model.eval(), report)


def save_weights_run(run: WeightsRun, out: os.PathLike | str) -> Path:
    """Write ``run`` as a run folder ``engine.load_run`` reads: ``out/checkpoints/best.safetensors`` (weights plus
    task, model, model_args and config metadata), ``out/config.yaml`` and ``out/pretrained_report.json``.

    Returns:
        The ``.safetensors`` path.
    """
    from engine.checkpoint import save_weights, serialize_weights
    from engine.io import atomic_write_text

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: an existing file, not a folder")
    weights = save_weights(out / "checkpoints" / "best.safetensors", serialize_weights(run.model, run.cfg, 0))
    atomic_write_text(out / "config.yaml", run.cfg.to_yaml())
    write_report(out, run.report, run.cfg.model_args.get(PRETRAINED_SHA256))
    return weights


def describe(run: WeightsRun) -> str:
    """One line: what was loaded (for the CLI)."""
    counts = run.report.to_dict()["counts"]
    return (f"{run.path.name}: {run.report.converter} format, {counts['loaded']} tensors loaded, "
            f"{counts['adapted']} adapted, {counts['new']} new, {counts['ignored']} ignored -> {run.cfg.model} "
            f"({json.dumps({k: v for k, v in model_overrides(run.cfg.model_args).items()})})")


_PACKAGES = ("medvit", "videovit", "backbones")  # registries searched by convert_weights, in this order


def convert_weights(path: os.PathLike | str, model: str, out: os.PathLike | str,
                    model_args: Optional[Mapping[str, Any]] = None) -> Tuple[WeightsRun, Path]:
    """Convert a weights file of any supported format into a vtk checkpoint folder (``vtk models convert``).

    The model's package decides the rest: ``medvit`` and ``videovit`` models go through their
    ``<package>.pretrained.weights_run`` (so the folder also records the registry test protocol and the class
    names, and ``vtk seg|video eval --checkpoint OUT`` works), ``backbones`` models are loaded as they are.

    Returns:
        ``(run, path of OUT/checkpoints/best.safetensors)``; ``engine.load_run(OUT)`` reads it.

    Raises:
        UserError: An unknown model (close names suggested), or any :func:`weights_run` error.
    """
    import importlib

    from engine.choices import close_matches_hint

    regs = [(pkg, importlib.import_module(pkg).registry) for pkg in _PACKAGES]
    pkg = next((p for p, reg in regs if reg.is_model(model)), None)
    if pkg is None:
        names = [n for _, reg in regs for n in [*reg.list_models(), *reg.aliases()]]
        raise UserError(f"--model {model}: unknown model{close_matches_hint(model, names) or '; see vtk models list'}")
    if pkg == "backbones":
        from engine.config import TrainConfig

        cfg = TrainConfig(task="", model=dict(regs)[pkg].resolve(model), model_args=dict(model_args or {}))
        run = weights_run(importlib.import_module(pkg).create_model, cfg, path)
    else:
        run = importlib.import_module(f"{pkg}.pretrained").weights_run(model, path, model_args=model_args)
    return run, save_weights_run(run, out)
