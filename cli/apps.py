"""The Typer command groups. Pipelines add their commands to these objects, so ``cli.main`` only wires them.

``vtk data synth btcv`` lives in ``cli/seg.py`` as ``@synth_app.command("btcv")``; ``vtk data synth kinetics400``
lives in ``cli/video.py``. Keep each group's commands in the module of the pipeline that owns them.
"""

import typer

__all__ = ["app", "seg_app", "video_app", "models_app", "data_app", "synth_app", "check_app", "prepare_app",
           "bench_app"]

_SETTINGS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="vtk",
    help="vtk: vision transformers for medical image segmentation and video recognition.\n\n"
    "Example: vtk seg train --model unetr --data btcv --data-dir ~/data/btcv --max-steps 1000",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings=_SETTINGS,
)
seg_app = typer.Typer(
    help="Medical image segmentation: UNETR, Swin-UNETR, TransUNet, MedT.\n\n"
    "Example: vtk seg train --model unetr --data btcv --data-dir data/btcv --max-steps 200",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
video_app = typer.Typer(
    help="Video recognition: TimeSformer, ViViT, STAM, VTN, MViT.\n\n"
    "Example: vtk video eval --checkpoint runs/video-mvit --data kinetics400 --data-dir data/k400 --views 5x1",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
models_app = typer.Typer(
    help="List and inspect every registered model.\n\nExample: vtk models info vit_base_patch16_224",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
data_app = typer.Typer(
    help="Create synthetic datasets and validate real downloads.\n\n"
    "Example: vtk data synth btcv --out data/btcv-synth --cases 6",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
synth_app = typer.Typer(
    help="Write a synthetic dataset in a real on-disk layout.\n\nExample: vtk data synth btcv --out DIR --cases 4",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
check_app = typer.Typer(
    help="Validate a dataset folder and report every problem in one pass.\n\n"
    "Example: vtk data check btcv --data-dir DIR",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
prepare_app = typer.Typer(
    help="Make a training-ready copy of a dataset (re-encoded smaller, with a manifest).\n\n"
    "Example: vtk data prepare kinetics400 --src DIR --out DIR --short-side 320 --workers 8",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
bench_app = typer.Typer(
    help="Benchmarks, reported as ratios against the reference implementation.\n\nExample: vtk bench backbones",
    no_args_is_help=True,
    context_settings=_SETTINGS,
)
data_app.add_typer(synth_app, name="synth")
data_app.add_typer(check_app, name="check")
data_app.add_typer(prepare_app, name="prepare")
app.add_typer(seg_app, name="seg")
app.add_typer(video_app, name="video")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
