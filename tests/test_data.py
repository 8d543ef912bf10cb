"""data.py on tiny generated competitions (LZW TIFFs, as Kaggle ships them) and on real samples."""

import shutil
import zipfile

import cv2
import numpy as np
import pytest

from conftest import run_script, shared

pytestmark = pytest.mark.slow  # every test here runs a script (tests/conftest.py)

OUTPUTS = [
    "imgs_train.npy", "imgs_mask_train.npy", "imgs_subject_train.npy", "imgs_test.npy",
    "imgs_id_test.npy"
]


def make_competition(raw, h=20, w=28, subjects=(1, 2), frames=3, test_ids=(3, 1, 2), seed=0):
    rng = np.random.default_rng(seed)
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir(parents=True)
    for s in subjects:
        for n in range(1, frames + 1):
            cv2.imwrite(str(raw / "train" / f"{s}_{n}.tif"),
                        rng.integers(0, 255, (h, w), dtype=np.uint8))
            mask = np.zeros((h, w), np.uint8)
            mask[2:2 + n, 3:3 + s] = 255
            cv2.imwrite(str(raw / "train" / f"{s}_{n}_mask.tif"), mask)
    for i in test_ids:
        cv2.imwrite(str(raw / "test" / f"{i}.tif"), np.full((h, w), i, np.uint8))
    return raw


def convert(raw, work, *extra, check=True):
    return run_script("data.py", "--raw", raw, "--workdir", work, "-q", *extra, check=check)


def test_converts_lzw_tiffs(tmp_path):
    raw = make_competition(tmp_path / "raw")
    assert b"\x05\x00" in (raw / "test" / "1.tif").read_bytes()  # compression tag 5: LZW
    convert(raw, tmp_path / "work")
    work = tmp_path / "work"
    images, masks = np.load(work / "imgs_train.npy"), np.load(work / "imgs_mask_train.npy")
    assert images.shape == masks.shape == (6, 20, 28) and images.dtype == masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    assert np.load(work / "imgs_subject_train.npy").tolist() == [1, 1, 1, 2, 2, 2]
    assert masks[4].sum() == 2 * 2  # subject 2, frame 2
    assert np.load(work / "imgs_id_test.npy").tolist() == [1, 2, 3]
    assert [int(t[0, 0]) for t in np.load(work / "imgs_test.npy")] == [1, 2, 3]
    expected = cv2.imread(str(raw / "train" / "2_3.tif"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(images[5], expected)


def zip_folder(folder, zip_path, prefix=""):
    with zipfile.ZipFile(zip_path, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, prefix + str(f.relative_to(folder)))


def test_competition_zip_with_folders(tmp_path):
    source = make_competition(tmp_path / "source")
    (source / "sample_submission.csv").write_text("img,pixels\n1,\n2,\n3,\n")
    raw = tmp_path / "raw"
    raw.mkdir()
    zip_folder(source, raw / "ultrasound-nerve-segmentation.zip")
    convert(raw, tmp_path / "work")
    assert (raw / "train" / "1_1.tif").exists() and (raw / "sample_submission.csv").exists()
    assert len(np.load(tmp_path / "work" / "imgs_train.npy")) == 6


def test_competition_zip_with_nested_zips(tmp_path):
    source = make_competition(tmp_path / "source")
    nested = tmp_path / "nested"
    nested.mkdir()
    for part in ("train", "test"):
        zip_folder(source / part, nested / f"{part}.zip", prefix=f"{part}/")
    with zipfile.ZipFile(nested / "sample_submission.csv.zip", "w") as z:
        z.writestr("sample_submission.csv", "img,pixels\n1,\n2,\n3,\n")
    raw = tmp_path / "raw"
    raw.mkdir()
    zip_folder(nested, raw / "ultrasound-nerve-segmentation.zip")
    convert(raw, tmp_path / "work")
    assert (raw / "sample_submission.csv").exists()
    assert np.load(tmp_path / "work" / "imgs_id_test.npy").tolist() == [1, 2, 3]


def test_path_traversal_member_is_refused(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "evil.zip", "w") as z:
        z.writestr("train/1_1.tif", b"x")
        z.writestr("../escaped.txt", b"gotcha")
    result = convert(raw, tmp_path / "work", check=False)
    assert result.returncode == 2
    assert "outside" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "escaped.txt").exists() and not (raw / "train").exists()


def test_mixed_sizes_are_an_error_and_nothing_is_written(tmp_path):
    raw = make_competition(tmp_path / "raw")
    cv2.imwrite(str(raw / "test" / "2.tif"), np.zeros((10, 10), np.uint8))
    result = convert(raw, tmp_path / "work", check=False)
    assert result.returncode == 2 and "2.tif" in result.stderr and "size" in result.stderr
    assert not any((tmp_path / "work").glob("*.npy"))


def test_masks_of_0_and_1_are_read_and_grey_masks_refused(tmp_path):
    raw = make_competition(tmp_path / "raw")
    mask = np.zeros((20, 28), np.uint8)
    mask[5:9, 6:10] = 1
    cv2.imwrite(str(raw / "train" / "1_1_mask.tif"), mask)
    convert(raw, tmp_path / "work")
    assert np.array_equal(np.load(tmp_path / "work" / "imgs_mask_train.npy")[0], mask)
    mask[5, 6] = 128
    cv2.imwrite(str(raw / "train" / "1_1_mask.tif"), mask)
    result = convert(raw, tmp_path / "work2", check=False)
    assert result.returncode == 2 and "1_1_mask.tif is not a binary mask" in result.stderr


def test_demo_writes_the_competition_layout(tmp_path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    run_script("data.py", "--demo", "--demo-size", 42, 58, "--demo-subjects", 3, "--raw", raw,
               "--workdir", work, "-q")
    masks = np.load(work / "imgs_mask_train.npy")
    assert masks.shape == (60, 42, 58)
    share = (masks.reshape(60, -1).max(1) > 0).mean()
    assert 0.2 < share < 0.6  # about 40% of frames hold a nerve
    assert len(np.unique(np.load(work / "imgs_subject_train.npy"))) == 3
    assert len(list(
        (raw / "test_masks").glob("*_mask.tif"))) == len(np.load(work / "imgs_id_test.npy"))


def test_real_kaggle_samples(tmp_path):
    sample = shared("nerve-kaggle-sample")
    raw = tmp_path / "raw"
    shutil.copytree(sample, raw)
    result = convert(raw, tmp_path / "work", check=False)
    assert result.returncode == 2 and "2_20_mask.tif" in result.stderr  # its image is missing
    convert(raw, tmp_path / "work", "--skip-unpaired")
    images = np.load(tmp_path / "work" / "imgs_train.npy")
    masks = np.load(tmp_path / "work" / "imgs_mask_train.npy")
    assert images.shape == (55, 420, 580) and masks.shape == (55, 420, 580)
    assert (masks.reshape(55, -1).max(1) > 0).sum() == 18
    assert np.load(tmp_path / "work" / "imgs_test.npy").shape == (24, 420, 580)
    reference = cv2.imread(str(sample / "train" / "1_1.tif"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(images[0], reference)
