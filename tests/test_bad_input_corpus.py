"""Bad-input corpus (issue 11), segmentation and generic half: one case per class of hostile input or fault.

Every case runs through ``cli.main.main`` and fails the test when the exit code is not the promised one (2 for a
user mistake), when stderr holds a traceback or more than one line, or when the line does not name the file or
option at fault. ``vtk data check`` cases must also list the problem in their table (stdout). The fake-header
case runs in a subprocess and bounds the peak memory (VmHWM) that ``vtk data check`` and ``vtk seg predict``
add over the imports.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Tuple

import nibabel as nib
import numpy as np
import pytest
import torch

from cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY_UNETR = ["--img-size", "16", "--feature-size", "4", "--model-arg", "embed_dim=32", "--model-arg", "depth=2",
              "--model-arg", "num_heads=2", "--model-arg", "patch_size=8", "--data-arg", "spacing=[12,12,12]",
              "--num-samples", "1"]
QUICK = ["--max-steps", "1", "--val-every", "0", "--device", "cpu", "--num-workers", "0", "--quiet",
         "--precision", "32"]
IMG, LAB = "imagesTr/img0001.nii.gz", "labelsTr/label0001.nii.gz"
VAL_LAB = "labelsTr/label0003.nii.gz"  # the synthetic set's one validation case


# ------------------------------------------------------------------------------------------------ file forgers
def forged_header(path: Path, shape: Tuple[int, ...], nifti2: bool = False) -> Path:
    """A header-only ``.nii.gz`` (~70 bytes) whose header claims ``shape`` int16 voxels."""
    hdr = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.eye(4), 1)
    hdr["vox_offset"] = hdr.sizeof_hdr + 4
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4, 9, mtime=0))
    return path


def rewrite_header(path: Path, sform=None, pixdim=None) -> Path:
    """Rewrite ``path``'s header fields byte for byte (nibabel's writer would refuse or repair these values)."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(img.get_data_dtype())
    hdr = img.header.copy()
    if sform is not None:
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
        hdr["sform_code"], hdr["qform_code"] = 1, 0
    if pixdim is not None:
        hdr["sform_code"], hdr["qform_code"] = 0, 1
        hdr["pixdim"][1:4] = pixdim
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F")
    path.write_bytes(gzip.compress(raw, 1, mtime=0))
    return path


def write_label(path: Path, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    lab = nib.load(str(path))
    nib.save(nib.Nifti1Image(edit(np.asarray(lab.dataobj)), lab.affine), str(path))
    return path


def _zero_affine() -> np.ndarray:
    a = np.zeros((4, 4))
    a[3, 3] = 1
    return a


def _singular_affine(path: Path) -> np.ndarray:
    a = nib.load(str(path)).affine.copy()
    a[:3, 2] = a[:3, 0]  # the z axis points along x
    return a


def _nan_affine(path: Path) -> np.ndarray:
    a = nib.load(str(path)).affine.copy()
    a[0, 0] = np.nan
    return a


def _set_label(value):
    def edit(lab):
        lab = lab.astype(np.float32 if isinstance(value, float) else np.int16)
        lab[lab == lab.max()] = value
        return lab
    return edit


def _edit_datalist(root: Path, edit: Callable[[dict], object]) -> None:
    js = root / "dataset_0.json"
    js.write_text(json.dumps(edit(json.loads(js.read_text()))))


# ------------------------------------------------------------------------------------------------ shared inputs
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Iterator[Dict[str, Path]]:
    """A synthetic BTCV (2 training + 1 validation + 1 test case) and a tiny UNETR run trained on it."""
    from medvit.data.synth import synth_btcv

    base = tmp_path_factory.mktemp("corpus")
    data = base / "btcv"
    synth_btcv(data, cases=3, size=24, seed=0, test_cases=1)
    run = base / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared machine
    try:
        assert main(["seg", "train", "--model", "unetr", "--data", "btcv", "--data-dir", str(data), "--out",
                     str(run), *QUICK, *TINY_UNETR]) == 0
        yield {"data": data, "run": run, "base": base}
    finally:
        torch.set_num_threads(threads)


class Case(NamedTuple):
    argv: List[str]
    names: str  # what the one stderr line (or, for `vtk data check`, its table) must name
    table: str = ""  # `vtk data check`: a problem text its table must list


def _data(c, tmp: Path) -> Path:
    dst = tmp / "data"
    shutil.copytree(c["data"], dst)
    return dst


def _train(c, tmp, *extra, data=None) -> List[str]:
    return ["seg", "train", "--model", "unetr", "--data", "btcv", "--data-dir", str(data or c["data"]), "--out",
            str(tmp / "run"), *QUICK, *TINY_UNETR, *extra]


def _eval(c, tmp, data, *extra) -> List[str]:
    return ["seg", "eval", "--checkpoint", str(c["run"]), "--data", "btcv", "--data-dir", str(data), "--device",
            "cpu", "--out", str(tmp / "eval"), *extra]


def _predict(c, tmp, input_path, *extra, checkpoint=None) -> List[str]:
    return ["seg", "predict", "--checkpoint", str(checkpoint or c["run"]), "--input", str(input_path), "--out",
            str(tmp / "pred"), "--device", "cpu", *extra]


def _check(data: Path) -> List[str]:
    return ["data", "check", "btcv", "--data-dir", str(data)]


# Each builder makes its bad input under ``tmp`` and returns the Case.
def fake_header_check(c, tmp):
    d = _data(c, tmp)
    forged_header(d / IMG, (2048, 2048, 1024))
    return Case(_check(d), "img0001.nii.gz", "voxels")


def fake_header_train(c, tmp):
    d = _data(c, tmp)
    forged_header(d / IMG, (2048, 2048, 1024))
    return Case(_train(c, tmp, data=d), "img0001.nii.gz")


def fake_header_under_cap_predict(c, tmp):  # 1024^3 is under the voxel cap: the file size refuses it
    return Case(_predict(c, tmp, forged_header(tmp / "ct.nii.gz", (1024, 1024, 1024))), "ct.nii.gz")


def fake_header_eval(c, tmp):
    d = _data(c, tmp)
    forged_header(d / "imagesTr/img0003.nii.gz", (1024, 1024, 512))
    return Case(_eval(c, tmp, d), "img0003.nii.gz")


def huge_nifti2_check(c, tmp):  # 100000^3 voxels: was MemoryError, exit 1, and no table
    d = _data(c, tmp)
    forged_header(d / IMG, (100000, 100000, 100000), nifti2=True)
    return Case(_check(d), "img0001.nii.gz", "over the limit")


def huge_nifti2_train(c, tmp):
    d = _data(c, tmp)
    forged_header(d / IMG, (100000, 100000, 100000), nifti2=True)
    return Case(_train(c, tmp, data=d), "img0001.nii.gz")


def zero_affine_check(c, tmp):  # `vtk data check` said "no problems"
    d = _data(c, tmp)
    rewrite_header(d / IMG, sform=_zero_affine())
    return Case(_check(d), "img0001.nii.gz", "zero-length voxel axis")


def zero_affine_train(c, tmp):  # was "RuntimeError: applying transform <monai...Orientationd ...>", exit 1
    d = _data(c, tmp)
    rewrite_header(d / IMG, sform=_zero_affine())
    rewrite_header(d / LAB, sform=_zero_affine())
    return Case(_train(c, tmp, data=d), "img0001.nii.gz")


def zero_affine_predict(c, tmp):
    src = tmp / "ct.nii.gz"
    shutil.copy(c["data"] / "imagesTs/img0004.nii.gz", src)
    return Case(_predict(c, tmp, rewrite_header(src, sform=_zero_affine())), "ct.nii.gz")


def singular_affine_train(c, tmp):
    d = _data(c, tmp)
    for f in (IMG, LAB):
        rewrite_header(d / f, sform=_singular_affine(d / f))
    return Case(_train(c, tmp, data=d), "img0001.nii.gz")


def nan_affine_train(c, tmp):
    d = _data(c, tmp)
    for f in (IMG, LAB):
        rewrite_header(d / f, sform=_nan_affine(d / f))
    return Case(_train(c, tmp, data=d), "img0001.nii.gz")


def negative_pixdim_train(c, tmp):  # nibabel silently takes abs(); the file is wrong
    d = _data(c, tmp)
    rewrite_header(d / IMG, pixdim=(-1.5, 1.5, 2.0))
    return Case(_train(c, tmp, data=d), "img0001.nii.gz")


def float_label_train(c, tmp):  # was rounded silently
    d = _data(c, tmp)
    write_label(d / LAB, _set_label(6.4))
    return Case(_train(c, tmp, data=d), "label0001.nii.gz")


def float_label_check(c, tmp):
    d = _data(c, tmp)
    write_label(d / LAB, _set_label(6.4))
    return Case(_check(d), "label0001.nii.gz", "non-integer label values 6.4")


def label_out_of_range_train(c, tmp):
    d = _data(c, tmp)
    write_label(d / LAB, _set_label(20))
    return Case(_train(c, tmp, data=d), "label0001.nii.gz")


def label_minus_one_eval(c, tmp):  # was accepted
    d = _data(c, tmp)
    write_label(d / VAL_LAB, _set_label(-1))
    return Case(_eval(c, tmp, d), "label0003.nii.gz")


def label_260_eval(c, tmp):  # was accepted
    d = _data(c, tmp)
    write_label(d / VAL_LAB, _set_label(260))
    return Case(_eval(c, tmp, d), "label0003.nii.gz")


def datalist_json_list_train(c, tmp):
    d = _data(c, tmp)
    _edit_datalist(d, lambda m: m["training"])
    return Case(_train(c, tmp, data=d), "dataset_0.json")


def datalist_json_list_check(c, tmp):  # was AttributeError, exit 1
    d = _data(c, tmp)
    _edit_datalist(d, lambda m: m["training"])
    return Case(_check(d), "dataset_0.json", "got a JSON list")


def datalist_integer_entry_train(c, tmp):
    d = _data(c, tmp)
    _edit_datalist(d, lambda m: {**m, "training": m["training"] + [3]})
    return Case(_train(c, tmp, data=d), "dataset_0.json: training[2]")


def datalist_missing_label_train(c, tmp):
    d = _data(c, tmp)
    _edit_datalist(d, lambda m: {**m, "training": m["training"] + [{"image": IMG}]})
    return Case(_train(c, tmp, data=d), 'dataset_0.json: training[2]: missing "label"')


def datalist_missing_label_check(c, tmp):
    d = _data(c, tmp)
    _edit_datalist(d, lambda m: {**m, "training": [{"image": IMG}] + m["training"][1:]})
    return Case(_check(d), "dataset_0.json", 'training[0]: missing "label"')


def unknown_model(c, tmp):
    argv = _train(c, tmp)
    argv[argv.index("unetr")] = "foo"
    return Case(argv, "--model foo")


def spacing_not_numbers(c, tmp):
    return Case(_train(c, tmp, "--data-arg", "spacing=[a,b]"), "--data-arg spacing")


def spacing_negative(c, tmp):
    return Case(_train(c, tmp, "--data-arg", "spacing=[-1.5,1.5,2]"), "--data-arg spacing")


def spacing_wrong_length(c, tmp):
    return Case(_train(c, tmp, "--data-arg", "spacing=[1.5,1.5]"), "--data-arg spacing")


def unknown_model_arg(c, tmp):
    return Case(_train(c, tmp, "--model-arg", "bogus=3"), "--model-arg: 'bogus' is not a known key, i.e. one of")


def unknown_data_arg(c, tmp):
    return Case(_train(c, tmp, "--data-arg", "bogus=3"), "--data-arg: 'bogus' is not a known key, i.e. one of")


def num_samples_zero(c, tmp):
    return Case(_train(c, tmp, "--num-samples", "0"), "--num-samples 0")


def lr_nan(c, tmp):
    return Case(_train(c, tmp, "--lr", "nan"), "lr: nan")


def sw_batch_size_zero_eval(c, tmp):
    return Case(_eval(c, tmp, c["data"], "--sw-batch-size", "0"), "--sw-batch-size 0")


def sw_batch_size_zero_predict(c, tmp):
    return Case(_predict(c, tmp, c["data"] / "imagesTs", "--sw-batch-size", "0"), "--sw-batch-size 0")


def cuda_without_gpu_predict(c, tmp):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = _predict(c, tmp, c["data"] / "imagesTs")
    argv[argv.index("--device") + 1] = "cuda"
    return Case(argv, "--device")


def binary_config(c, tmp):
    cfg = tmp / "weights.yaml"
    cfg.write_bytes(b"\x00\x01\x02PK\xff\xfe\x80binary")
    return Case(["seg", "train", "--config", str(cfg)], "weights.yaml")


def wrong_shape_checkpoint(c, tmp):
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = c["run"] / "checkpoints/best.safetensors"
    with safe_open(str(src), "pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in sd if k.endswith("bias") and sd[k].shape[0] == 14)  # the 14-class output layer
    sd[key] = torch.zeros(3)
    save_file(sd, str(tmp / "shape.safetensors"), metadata=meta)
    return Case(_predict(c, tmp, c["data"] / "imagesTs", checkpoint=tmp / "shape.safetensors"),
                f"{key} has shape (3,) in the checkpoint but (14,) in the model")


def foreign_safetensors_checkpoint(c, tmp):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp / "foreign.safetensors"))
    return Case(_predict(c, tmp, c["data"] / "imagesTs", checkpoint=tmp / "foreign.safetensors"),
                "foreign.safetensors: not a vtk run checkpoint")


def pickled_code_pretrained(c, tmp):
    sentinel = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    torch.save({"state_dict": {"w": Evil()}}, tmp / "evil.pt")
    return Case(["seg", "predict", "--model", "unetr", "--pretrained", str(tmp / "evil.pt"), "--input",
                 str(c["data"] / "imagesTs"), "--out", str(tmp / "pred"), "--device", "cpu"],
                "evil.pt: the file contains pickled code (posix.system), and vtk only loads weights")


def out_is_a_file_train(c, tmp):
    (tmp / "run").write_text("not a folder")
    return Case(_train(c, tmp), "--out is an existing file")


def out_is_a_file_predict(c, tmp):  # was FileExistsError, exit 1
    (tmp / "pred").write_text("not a folder")
    return Case(_predict(c, tmp, c["data"] / "imagesTs"), "--out is an existing file")


def out_is_a_file_eval(c, tmp):
    (tmp / "eval").write_text("not a folder")
    return Case(_eval(c, tmp, c["data"]), "--out is an existing file")


def run_folder_permission(c, tmp):
    if os.geteuid() == 0:  # root ignores permission bits; /sys refuses even root
        out = Path("/sys/vtk-corpus-run")
    else:
        locked = tmp / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "run"
    argv = _train(c, tmp)
    argv[argv.index("--out") + 1] = str(out)
    return Case(argv, f"{out}: cannot create the run folder")


CASES = [fake_header_check, fake_header_train, fake_header_under_cap_predict, fake_header_eval, huge_nifti2_check,
         huge_nifti2_train, zero_affine_check, zero_affine_train, zero_affine_predict, singular_affine_train,
         nan_affine_train, negative_pixdim_train, float_label_train, float_label_check, label_out_of_range_train,
         label_minus_one_eval, label_260_eval, datalist_json_list_train, datalist_json_list_check,
         datalist_integer_entry_train, datalist_missing_label_train, datalist_missing_label_check, unknown_model,
         spacing_not_numbers, spacing_negative, spacing_wrong_length, unknown_model_arg, unknown_data_arg,
         num_samples_zero, lr_nan, sw_batch_size_zero_eval, sw_batch_size_zero_predict, cuda_without_gpu_predict,
         binary_config, wrong_shape_checkpoint, foreign_safetensors_checkpoint, pickled_code_pretrained,
         out_is_a_file_train, out_is_a_file_predict, out_is_a_file_eval, run_folder_permission]


@pytest.mark.parametrize("build", CASES, ids=[f.__name__ for f in CASES])
def test_bad_input_exits_2_with_one_line(build, corpus, tmp_path, capsys):
    case = build(corpus, tmp_path)
    capsys.readouterr()
    rc = main(case.argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "Traceback" not in out, err
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("vtk: error: "), err
    if case.table:  # `vtk data check`: the table names the file and the problem; stderr names the folder
        assert case.names in out and case.table in out, out
        assert str(Path(case.argv[-1])) in lines[0]
    else:
        assert case.names in lines[0], lines[0]
    assert not (tmp_path / "pwned").exists()  # pickled code never runs
    assert not (tmp_path / "run" / "checkpoints").exists()  # every refusal came before the first step


_MEMORY_PROBE = r"""
import json, os, sys
import torch, monai, nibabel, matplotlib, safetensors  # noqa: F401  (the imports every command makes)
import cli.main, cli.seg, medvit.inference, medvit.data.check, medvit.data.transforms, medvit.nets  # noqa: F401
from cli.main import main

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

data, fake, run, out = sys.argv[1:5]
result = dict(base=hwm_mb())
for cap in ("", "10000000000"):  # the default voxel cap refuses it; above the claim, the file size must
    os.environ["VTK_MAX_VOXELS"] = cap
    result[f"rc_check{cap}"] = main(["data", "check", "btcv", "--data-dir", data])
    result[f"check{cap}"] = hwm_mb()
    result[f"rc_predict{cap}"] = main(["seg", "predict", "--checkpoint", run, "--input", fake, "--out", out,
                                       "--device", "cpu"])
    result[f"predict{cap}"] = hwm_mb()
print(json.dumps(result))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (Linux)")
def test_fake_header_costs_no_memory(corpus, tmp_path):
    """A 66-byte .nii.gz claiming 2048 x 2048 x 1024 int16 voxels (8 GiB) drove check/predict to 9.3 GB before;
    now both refuse it from the header: peak memory (VmHWM) grows < 200 MB over the imports, by the voxel cap and,
    with the cap raised above the claim, by the file-size bound alone."""
    d = _data(corpus, tmp_path)
    fake = forged_header(d / IMG, (2048, 2048, 1024))
    assert fake.stat().st_size < 100
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(d), str(fake), str(corpus["run"]),
                           str(tmp_path / "pred")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {v for k, v in m.items() if k.startswith("rc_")} == {2}, (m, proc.stderr)
    assert "img0001.nii.gz" in proc.stdout and "over the limit" in proc.stderr
    assert "gzip file can hold at most" in proc.stderr  # the file-size bound, with the cap out of the way
    peak = max(v for k, v in m.items() if not k.startswith("rc_"))
    assert peak - m["base"] < 200, m
