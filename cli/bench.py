"""``vtk bench ...``: run the benchmark scripts of ``benchmarks/`` (ratios against reference implementations)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import List, Optional

import typer

from cli.apps import bench_app
from engine.errors import UserError

__all__ = ["bench_backbones", "bench_matrix_rate", "bench_mfu_budget", "bench_video_loader", "bench_video_eval",
           "bench_train_step", "run_benchmark_script"]


def run_benchmark_script(script: str, argv: List[str]) -> int:
    """Import ``benchmarks.<script>`` (installed with the package) and call its ``main(argv)``."""
    try:
        mod = importlib.import_module(f"benchmarks.{script}")
    except ModuleNotFoundError as e:
        if e.name not in (f"benchmarks.{script}", "benchmarks"):
            raise UserError(f"vtk bench: the benchmark needs {e.name!r}, which is not installed "
                            f"(pip install \".[test]\" installs the reference libraries)") from e
        raise UserError(f"vtk bench: no benchmark module benchmarks.{script}") from e
    return int(mod.main(argv) or 0)


@bench_app.command("backbones")
def bench_backbones(model: str = typer.Option("all", "--model", help="Pair to run: vit (vs timm), vit3d (vs MONAI "
                                              "ViT) or all."),
                    steps: int = typer.Option(5, "--steps", help="Timed train steps per model."),
                    warmup: int = typer.Option(2, "--warmup", help="Untimed warm-up steps per model."),
                    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if "
                                                         "available).")) -> None:
    """Train-step time (forward+backward+AdamW) of vtk ViT vs timm and 3D ViT vs MONAI, with ratios.

    Example: vtk bench backbones --model vit --steps 10
    """
    if model not in ("all", "vit", "vit3d"):
        raise UserError(f"--model must be all, vit or vit3d, got {model!r}")
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    argv = ["--model", model, "--steps", str(steps), "--warmup", str(warmup)]
    rc = run_benchmark_script("backbones_train_step", argv + (["--device", device] if device else []))
    if rc:
        raise typer.Exit(rc)


@bench_app.command("video-loader")
def bench_video_loader(clips: str = typer.Option("8x32,16x4", "--clips", help="Clip recipes, frames x stride "
                                                 "(8x32: TimeSformer, 16x4: MViT)."),
                       num_frames: Optional[int] = typer.Option(None, "--num-frames", help="One recipe instead of "
                                                                "--clips: frames per clip."),
                       stride: Optional[int] = typer.Option(None, "--stride", help="With --num-frames: frame step."),
                       rounds: int = typer.Option(2, "--rounds", help="Alternating rounds; the median ratio is "
                                                  "reported."),
                       workers: int = typer.Option(2, "--workers", help="DataLoader workers for every loader."),
                       videos: int = typer.Option(12, "--videos", help="Generated H.264 videos (340x256, 30 fps)."),
                       repeats: int = typer.Option(8, "--repeats", help="Times each video is listed."),
                       video_frames: int = typer.Option(300, "--video-frames", help="Frames per generated video."),
                       cache: Path = typer.Option(Path("/tmp/vtk-bench-videos"), "--dir",
                                                  help="Where the generated videos are kept between runs.")) -> None:
    """Clips/s of vtk's loader (PyAV seek, the default; decord) vs pytorchvideo's Kinetics with PyAV and decord.

    Example: vtk bench video-loader --clips 8x32,16x4 --rounds 3
    """
    if num_frames is not None or stride is not None:
        clips = f"{num_frames if num_frames is not None else 8}x{stride if stride is not None else 32}"
    try:
        recipes = [tuple(int(v) for v in r.lower().split("x")) for r in clips.split(",")]
        assert recipes and all(len(r) == 2 for r in recipes)
    except (ValueError, AssertionError):
        raise UserError(f"--clips: {clips!r} must look like 8x32,16x4 (frames x stride)") from None
    if min(min(min(r) for r in recipes), rounds, videos, repeats) < 1 or workers < 0:
        raise UserError(f"clips {clips}, --rounds {rounds}, --videos {videos} and --repeats {repeats} must be >= 1 "
                        f"and --workers {workers} >= 0")
    span = max((f - 1) * s + 1 for f, s in recipes)
    if video_frames < span:
        raise UserError(f"--video-frames {video_frames} is shorter than one clip of {clips} ({span} frames)")
    if videos * repeats <= 4:
        raise UserError(f"--videos {videos} x --repeats {repeats} must exceed one batch of 4 (the first batch, "
                        f"worker start-up, is not timed)")
    argv = ["--clips", clips, "--rounds", str(rounds), "--workers", str(workers), "--videos", str(videos),
            "--repeats", str(repeats), "--video-frames", str(video_frames), "--dir", str(cache)]
    rc = run_benchmark_script("video_loader", argv)
    if rc:
        raise typer.Exit(rc)


@bench_app.command("train-step")
def bench_train_step(family: str = typer.Option("all", "--family", help="Comma-separated families: vit_b, swin_t, "
                                                "unetr, swin_unetr, transunet, medt, timesformer, vivit, stam, vtn, "
                                                "mvit (default all)."),
                     precision: str = typer.Option("auto", "--precision", help="Comma-separated: 32, bf16 "
                                                   "(default auto: both where the device has native bf16, else "
                                                   "32)."),
                     size: str = typer.Option("small", "--size", help="tiny (seconds), small (real models, small "
                                              "inputs: minutes on a CPU) or full (the papers' inputs)."),
                     steps: int = typer.Option(3, "--steps", help="Timed train steps per model and precision."),
                     warmup: int = typer.Option(1, "--warmup", help="Untimed warm-up steps per model."),
                     batch: Optional[int] = typer.Option(None, "--batch", help="Batch size instead of the size's "
                                                         "own (e.g. 2: the 3D recipes' two crops per case)."),
                     device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if "
                                                          "available)."),
                     memory: bool = typer.Option(True, "--memory/--no-memory", help="Peak memory of each step (a "
                                                 "subprocess per model and precision, run first: on a CPU a family "
                                                 "whose steps would not fit in memory at once is skipped, exit 1)."),
                     out: Optional[Path] = typer.Option(None, "--out", help="Write the markdown table here (after "
                                                        "every family)."),
                     json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON here "
                                                             "(after every family).")
                     ) -> None:
    """Train step of every family vs its reference (timm, MONAI, HF, pytorchvideo, official re-typings) in fp32 and
    bf16: time ratios (with the spread of the per-round ratios), vtk's default vs the reference's default, MFU
    (against the matrix rate timed in the same rounds) and peak memory, as a markdown table.

    Example: nice vtk bench train-step --family vit_b,timesformer --size small --out train_step.md
    """
    from benchmarks.train_step_suite import FAMILIES, PRECISIONS, SIZES
    from engine.choices import check_choice

    for f in ([] if family == "all" else [v.strip() for v in family.split(",")]):
        check_choice("--family", f, list(FAMILIES))
    for p in ([] if precision == "auto" else [v.strip() for v in precision.split(",")]):
        check_choice("--precision", p, PRECISIONS)
    check_choice("--size", size, SIZES)
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    argv = ["--family", family, "--precision", precision, "--size", size, "--steps", str(steps), "--warmup",
            str(warmup)] + (["--device", device] if device else []) + ([] if memory else ["--no-memory"])
    argv += ["--batch", str(batch)] if batch is not None else []
    argv += (["--out", str(out)] if out else []) + (["--json", str(json_out)] if json_out else [])
    rc = run_benchmark_script("train_step_suite", argv)
    if rc:
        raise typer.Exit(rc)


@bench_app.command("mfu-budget")
def bench_mfu_budget(family: str = typer.Option("vit_b", "--family", help="Comma-separated families (as for "
                                                "train-step; default vit_b)."),
                     size: str = typer.Option("full", "--size", help="tiny, small or full (the papers' inputs)."),
                     steps: int = typer.Option(3, "--steps", help="Unprofiled train steps timed (median)."),
                     out: Optional[Path] = typer.Option(None, "--out", help="Write the markdown here."),
                     json_out: Optional[Path] = typer.Option(None, "--json", help="Write the budgets as JSON here.")
                     ) -> None:
    """What stands between vtk's default train step and the matrix rate: the profiled step's time by group, and
    every matmul rebuilt from the profile and timed alone (the MFU ceiling of the step's own matrix shapes).

    Example: nice vtk bench mfu-budget --family vit_b --size full --out budget.md
    """
    from benchmarks.train_step_suite import FAMILIES, SIZES
    from engine.choices import check_choice

    for f in [v.strip() for v in family.split(",")]:
        check_choice("--family", f, list(FAMILIES))
    check_choice("--size", size, SIZES)
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    argv = ["--family", family, "--size", size, "--steps", str(steps)]
    argv += (["--out", str(out)] if out else []) + (["--json", str(json_out)] if json_out else [])
    rc = run_benchmark_script("mfu_budget", argv)
    if rc:
        raise typer.Exit(rc)


@bench_app.command("matrix-rate")
def bench_matrix_rate(dtypes: str = typer.Option("32,bf16,16", "--dtypes", help="Comma-separated: 32, bf16, 16."),
                      n: int = typer.Option(2048, "--n", help="Matrix edge (halved on a CPU for an emulated "
                                            "dtype)."),
                      device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if "
                                                           "available)."),
                      json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rates as JSON here.")
                      ) -> None:
    """This device's matrix-multiply rate in fp32, bf16 and fp16, each against fp32, native or emulated, and what
    --precision auto picks from it (seconds).

    Example: vtk bench matrix-rate
    """
    from benchmarks.matrix_rates import DTYPES
    from engine.choices import check_choice

    for d in [v.strip() for v in dtypes.split(",")]:
        check_choice("--dtypes", d, list(DTYPES))
    if n < 256:
        raise UserError(f"--n must be >= 256, got {n}")
    argv = ["--dtypes", dtypes, "--n", str(n)] + (["--device", device] if device else [])
    rc = run_benchmark_script("matrix_rates", argv + (["--json", str(json_out)] if json_out else []))
    if rc:
        raise typer.Exit(rc)


@bench_app.command("video-eval")
def bench_video_eval(videos: int = typer.Option(8, "--videos", help="Generated H.264 videos (340x256, 30 fps)."),
                     views: str = typer.Option("4x3", "--views", help="TxS views per video."),
                     num_frames: int = typer.Option(8, "--num-frames", help="Frames per clip."),
                     stride: int = typer.Option(32, "--stride", help="Frame step inside a clip."),
                     crop_size: int = typer.Option(224, "--crop-size", help="Crop edge in pixels."),
                     embed_dim: int = typer.Option(64, "--embed-dim", help="Width of the TimeSformer both loops run."),
                     depth: int = typer.Option(2, "--depth", help="Blocks of that model."),
                     workers: int = typer.Option(2, "--workers", help="DataLoader workers for both loops."),
                     video_frames: int = typer.Option(300, "--video-frames", help="Frames per generated video."),
                     rounds: int = typer.Option(1, "--rounds", help="Alternating rounds; the median ratio is "
                                                "reported."),
                     cache: Path = typer.Option(Path("/tmp/vtk-bench-videos"), "--dir",
                                                help="Where the generated videos are kept between runs.")) -> None:
    """Videos/s of vtk's multi-view eval (one decode per video) vs a PySlowFast-style loop (one decode per view).

    Example: vtk bench video-eval --views 4x3 --videos 8
    """
    from videovit.data.samplers import parse_views

    try:
        parse_views(views)
    except ValueError as e:
        raise UserError(f"--views: {e}") from None
    span = (num_frames - 1) * stride + 1
    if min(videos, num_frames, stride, crop_size, embed_dim, depth, rounds) < 1 or workers < 0:
        raise UserError(f"--videos {videos}, --num-frames {num_frames}, --stride {stride}, --crop-size {crop_size}, "
                        f"--embed-dim {embed_dim}, --depth {depth}, --rounds {rounds} must be >= 1 and --workers "
                        f"{workers} >= 0")
    if video_frames < span:
        raise UserError(f"--video-frames {video_frames} is shorter than one {num_frames}x{stride} clip ({span} frames)")
    argv = ["--videos", str(videos), "--views", views, "--num-frames", str(num_frames), "--stride", str(stride),
            "--crop-size", str(crop_size), "--embed-dim", str(embed_dim), "--depth", str(depth), "--workers",
            str(workers), "--video-frames", str(video_frames), "--rounds", str(rounds), "--dir", str(cache)]
    rc = run_benchmark_script("video_eval", argv)
    if rc:
        raise typer.Exit(rc)
