"""Unit tests of the input checks behind the bad-input corpus: NIfTI header (voxel cap, file size, gzip trailer,
affine), the one label check, datalist schema and --data-arg/--model-arg rules. Each builds the real bad file."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from engine.errors import UserError
from medvit.data.check import check_label, label_problem
from medvit.data.layouts import datalist_problems, load_datalist
from medvit.io import MAX_VOXELS, affine_problem, check_volume_header, read_nifti, write_nifti
from medvit.recipes import check_data_args, check_model_args, model_keywords


def _volume(path, shape=(10, 12, 8), dtype=np.int16, seed=0):
    data = np.random.default_rng(seed).integers(-100, 100, shape).astype(dtype)
    write_nifti(path, data, np.diag([1.5, 1.5, 2.0, 1.0]))
    return data


def _header_only(path, shape, nifti2=False):
    hdr = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.eye(4), 1)
    hdr["vox_offset"] = hdr.sizeof_hdr + 4
    raw = hdr.binaryblock + b"\0" * 4
    path.write_bytes(gzip.compress(raw, 9, mtime=0) if path.name.endswith(".gz") else raw)
    return path


def test_valid_volumes_pass_and_read_back(tmp_path):
    data = _volume(tmp_path / "ct.nii.gz")
    assert check_volume_header(tmp_path / "ct.nii.gz").shape == data.shape
    np.testing.assert_array_equal(read_nifti(tmp_path / "ct.nii.gz").data, data)
    _volume(tmp_path / "ct.nii")
    check_volume_header(tmp_path / "ct.nii")


def test_multi_member_gzip_is_counted_not_refused(tmp_path):
    """ISIZE is the LAST member's size only: a legit 2-member .nii.gz must still be accepted (and read)."""
    data = _volume(tmp_path / "one.nii.gz")
    raw = gzip.decompress((tmp_path / "one.nii.gz").read_bytes())
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:-100], mtime=0) + gzip.compress(raw[-100:], mtime=0))
    assert int.from_bytes(two.read_bytes()[-4:], "little") == 100  # the trailer alone would say "too small"
    np.testing.assert_array_equal(read_nifti(two).data, data)


@pytest.mark.parametrize("name", ["fake.nii.gz", "fake.nii"])
def test_forged_header_under_the_cap_is_refused_by_the_file_size(tmp_path, name):
    f = _header_only(tmp_path / name, (1024, 1024, 1024))  # 2 GiB claimed in < 400 bytes
    held = "the 6.-byte gzip file can hold at most" if name.endswith(".gz") else "the file has 352 bytes"
    with pytest.raises(UserError, match=rf"{name}: header claims 1024x1024x1024 voxels of int16 \(2147484000 "
                                        rf"bytes\) but {held}"):
        check_volume_header(f)


def test_forged_header_that_deflate_could_hold_is_refused_by_its_gzip_trailer(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((256, 256, 256))  # 32 MiB claimed; 40 kB of noise compresses to > 32 MiB / 1032
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.eye(4), 1)
    hdr["vox_offset"] = 352
    noise = np.random.default_rng(0).bytes(40_000)
    f = tmp_path / "noise.nii.gz"
    f.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + noise, mtime=0))
    with pytest.raises(UserError, match=r"noise.nii.gz: header claims 256x256x256 voxels of int16 \(33554784 bytes\) "
                                        r"but the file decompresses to 40352 bytes"):
        check_volume_header(f)


def test_truncated_gzip_whose_trailer_lies_is_counted(tmp_path):
    _volume(tmp_path / "ct.nii.gz", shape=(40, 40, 40))
    raw = (tmp_path / "ct.nii.gz").read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2] + (2**31).to_bytes(4, "little"))  # half a stream, a huge ISIZE
    with pytest.raises(UserError, match="cut.nii.gz: truncated or corrupt NIfTI"):
        read_nifti(bad)
    bad.write_bytes(raw[: len(raw) // 2] + (7).to_bytes(4, "little"))  # a small ISIZE: the stream is counted
    with pytest.raises(UserError, match="cut.nii.gz: header claims 40x40x40 voxels .* gzip stream ends"):
        check_volume_header(bad)


def test_voxel_cap_and_its_override(tmp_path, monkeypatch):
    f = _header_only(tmp_path / "big.nii.gz", (100000, 100000, 100000), nifti2=True)
    with pytest.raises(UserError, match=rf"big.nii.gz: header claims 100000x100000x100000 = 10+ voxels, over "
                                        rf"the limit of {MAX_VOXELS}"):
        check_volume_header(f)
    _volume(tmp_path / "ct.nii.gz")  # 960 voxels
    monkeypatch.setenv("VTK_MAX_VOXELS", "500")
    with pytest.raises(UserError, match="over the limit of 500"):
        check_volume_header(tmp_path / "ct.nii.gz")
    monkeypatch.setenv("VTK_MAX_VOXELS", "lots")
    with pytest.raises(UserError, match="VTK_MAX_VOXELS: expected a positive integer, got 'lots'"):
        check_volume_header(tmp_path / "ct.nii.gz")


def test_affine_problems():
    good = np.diag([0.8, 0.8, 2.5, 1.0])
    assert affine_problem(good) is None
    rotated = good.copy()
    rotated[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ good[:3, :3]
    assert affine_problem(rotated) is None
    assert "zero-length" in affine_problem(np.diag([0.0, 0.0, 0.0, 1.0]))
    singular = good.copy()
    singular[:3, 2] = singular[:3, 0]
    assert "singular" in affine_problem(singular)
    nan = good.copy()
    nan[1, 3] = np.nan
    assert "non-finite" in affine_problem(nan)


def test_label_problem_rules():
    assert label_problem(np.array([0, 1, 13], np.int16), 14) is None
    assert label_problem(np.array([0.0, 3.0], np.float32), 14) is None  # float storage of integer ids is fine
    assert "non-integer label values 6.4" in label_problem(np.array([0, 6.4], np.float32), 14)
    assert "label values -1, 260 outside 0..13" in label_problem(np.array([-1, 0, 260, 260]), 14)
    assert label_problem(np.array([0, 13]), 9, {6: 5, 11: 8}, file_classes=14) is None  # BTCV ids, Synapse model
    assert "outside 0..4" in label_problem(np.array([0, 13]), 5, {6: 5, 11: 8}, file_classes=14)


def test_check_label_returns_ids_and_names_the_file(tmp_path):
    write_nifti(tmp_path / "lab.nii.gz", np.array([[[0, 2], [1, 2]]], np.uint8), np.eye(4))
    ids = check_label(read_nifti(tmp_path / "lab.nii.gz"), 3)
    assert ids.dtype == np.int64 and ids.max() == 2
    with pytest.raises(UserError, match=r"lab.nii.gz: label values 2 outside 0..1"):
        check_label(read_nifti(tmp_path / "lab.nii.gz"), 2)


def test_datalist_schema_names_every_entry(tmp_path):
    meta = {"training": [{"image": "a", "label": "b"}, 3, {"image": "c"}, "d"], "validation": {"image": "x"},
            "test": ["t", {"label": "y"}]}
    assert datalist_problems(meta) == [
        ("training[1]", 'expected an object with "image" and "label", got a JSON number 3'),
        ("training[2]", 'missing "label"'),
        ("training[3]", "missing \"label\" (a bare path 'd'; expected {\"image\": ..., \"label\": ...})"),
        ("validation", "expected a list of entries, got a JSON object"),
        ("test[1]", 'missing "image"'),
    ]
    js = tmp_path / "dataset_0.json"
    js.write_text('[{"image": "a", "label": "b"}]')
    with pytest.raises(UserError, match=r"dataset_0.json: expected a JSON object .* got a JSON list"):
        load_datalist(js)


def test_data_arg_rules():
    check_data_args({"spacing": [1.5, 1.5, 2.0], "roi": [96, 96, 96], "num_samples": 2, "a_min": -175,
                     "a_max": 250, "cache": True, "flip_prob": 0.2, "names": ["bg", "liver"]})
    for bad, match in [({"spacing": ["a", "b"]}, r"--data-arg spacing=\['a', 'b'\]: expected 3 positive"),
                       ({"spacing": [1.5, -1.5, 2]}, "expected 3 positive numbers"),
                       ({"spacing": [1.5, 1.5]}, "expected 3 positive numbers"),
                       ({"num_samples": 0}, "--num-samples 0: expected an integer >= 1"),
                       ({"roi": 0}, "--img-size 0: expected a positive integer"),
                       ({"flip_prob": 2}, "probability"),
                       ({"a_min": 10, "a_max": 5}, "must be increasing"),
                       ({"spacingg": [1, 1, 1]}, "--data-arg: 'spacingg' is not a known key, i.e. one of a_max, "
                                                 ".*; did you mean spacing\\?")]:
        with pytest.raises(UserError, match=match):
            check_data_args(bad)


def test_model_arg_keys_come_from_the_model_class():
    keys = model_keywords("unetr")
    assert {"embed_dim", "depth", "patch_size", "feature_size", "num_classes"} <= keys and "self" not in keys
    check_model_args("unetr", {"embed_dim": 32, "pretrained": "x.pth", "pretrained_sha256": "0"})
    with pytest.raises(UserError, match="--model-arg: 'embed_dm' is not a known key, .*did you mean embed_dim"):
        check_model_args("unetr", {"embed_dm": 32})
    with pytest.raises(UserError, match="--model-arg: 'feature_size' is not a known key"):  # MedT has none
        check_model_args("medt", {"feature_size": 8})


def test_folder2d_masks_go_through_the_label_check(tmp_path):
    from PIL import Image

    from medvit.data.check import check_mask
    from medvit.data.datasets import load_folder2d

    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp_path / "a.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 7  # neither a class id of a 2-class model nor a 0/255 mask
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    item = {"image": str(tmp_path / "a.png"), "label": str(tmp_path / "a_mask.png")}
    assert len(load_folder2d([item], (8, 8))) == 1  # without num_classes: read as before
    with pytest.raises(UserError, match=r"a_mask.png: label values 7 outside 0..1"):
        load_folder2d([item], (8, 8), num_classes=2)
    assert check_mask("m.png", np.array([[0, 1]]), 2).max() == 1
