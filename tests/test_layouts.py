"""data.py on the layouts people bring: image and mask folders (PNG, JPEG, TIFF, mixed sizes,
colour), DSB-style instance folders, label masks, and the ISBI 2012 slices end to end."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import run_script, shared
from folder_sets import read_gray, read_labels, write_pairs

pytestmark = pytest.mark.slow  # every test here runs a script (tests/conftest.py)


def convert(work, *flags, check=True):
    return run_script("data.py", "--workdir", work, "-q", *flags, check=check)


def load(work, name):
    return np.load(work / f"{name}.npy")


def test_folders_of_mixed_formats_and_sizes(tmp_path):
    sizes = [(40, 50), (30, 64), (40, 50), (52, 36)]
    names = ["a2", "a10", "b1", "a1"]  # natural order: a1 a2 a10 b1
    write_pairs(tmp_path / "img", tmp_path / "msk", sizes, extensions=(".png", ".jpg", ".tif"),
                names=names)
    write_pairs(tmp_path / "test", tmp_path / "test_msk", [(20, 30), (24, 24)], names=["t1", "t0"],
                seed=1)
    work = tmp_path / "work"
    convert(work, "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--test-images",
            tmp_path / "test")
    images, masks = load(work, "imgs_train"), load(work, "imgs_mask_train")
    assert images.shape == masks.shape == (4, 52, 64) and images.dtype == masks.dtype == np.uint8
    order = ["a1", "a2", "a10", "b1"]
    by_name = dict(zip(names, sizes))
    assert load(work, "imgs_size_train").tolist() == [list(by_name[n]) for n in order]
    for i, name in enumerate(order):
        h, w = by_name[name]
        source = next((tmp_path / "img").glob(f"{name}.*"))
        assert np.array_equal(images[i, :h, :w], read_gray(source))
        assert np.array_equal(masks[i, :h, :w], read_gray(tmp_path / "msk" / f"{name}.png") // 255)
        assert not images[i, h:].any() and not images[i, :, w:].any()  # top-left on a zero canvas
    assert load(work, "imgs_id_test").tolist() == ["t0", "t1"]
    assert load(work, "imgs_size_test").tolist() == [[24, 24], [20, 30]]
    assert not (work / "imgs_truth_test.npy").exists()
    assert json.loads((work / "data.json").read_text()) == {"classes": 1}


def test_masks_beside_images_with_a_suffix_and_one_size(tmp_path):
    folder = tmp_path / "train"
    write_pairs(folder, folder, [(32, 48)] * 3, suffix="_mask")
    write_pairs(tmp_path / "test", tmp_path / "test_masks", [(32, 48)] * 2, suffix="_mask", seed=2)
    work = tmp_path / "work"
    convert(work, "--images", folder, "--masks", folder, "--mask-suffix", "_mask", "--test-images",
            tmp_path / "test", "--test-masks", tmp_path / "test_masks")
    assert load(work, "imgs_train").shape == (3, 32, 48)
    assert not (work / "imgs_size_train.npy").exists()  # one size: the shape says it
    truth = load(work, "imgs_truth_test")
    assert truth.shape == (2, 32, 48) and set(np.unique(truth)) == {0, 1}


def test_colour_images_keep_three_channels(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[4:8, :, 2] = 90  # a bluish band
    Image.fromarray(rgb).save(tmp_path / "img" / "x.png")
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(tmp_path / "msk" / "x.png")
    Image.fromarray(np.full((16, 24), 77,
                            np.uint8)).save(tmp_path / "img" / "gray.png")  # gray: replicated
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(tmp_path / "msk" / "gray.png")
    work = tmp_path / "work"
    convert(work, "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--holdout", 1,
            "--channels", 3)
    images = load(work, "imgs_train")
    assert images.shape == (1, 16, 24, 3)
    assert (images[0] == 77).all()  # "gray" sorts first
    test = load(work, "imgs_test")
    assert np.array_equal(test[0], rgb)  # RGB order, not OpenCV's BGR
    convert(work, "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--holdout", 1)
    assert load(work, "imgs_test").shape == (1, 16, 24)


def test_dsb_instance_masks_are_merged(tmp_path):
    rng = np.random.default_rng(0)
    root, test_root = tmp_path / "stage1_train", tmp_path / "stage1_test"
    union = {}
    for n, (case, h, w) in enumerate([("f00d", 30, 40), ("beef", 36, 36)]):
        (root / case / "images").mkdir(parents=True)
        (root / case / "masks").mkdir()
        Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8),
                        "RGBA").save(root / case / "images" / f"{case}.png")
        union[case] = np.zeros((h, w), np.uint8)
        for k in range(3):
            instance = np.zeros((h, w), np.uint8)
            cv2.circle(instance, (5 + 10 * k, 6 + 8 * k), 4, 255, -1)
            cv2.imwrite(str(root / case / "masks" / f"m{k}.png"), instance)
            union[case] |= instance // 255
    (test_root / "cafe" / "images").mkdir(parents=True)
    cv2.imwrite(str(test_root / "cafe" / "images" / "cafe.png"), np.full((20, 20), 9, np.uint8))
    work = tmp_path / "work"
    convert(work, "--dsb", root, "--test-images", test_root)
    masks, sizes = load(work, "imgs_mask_train"), load(work, "imgs_size_train")
    for i, case in enumerate(["beef", "f00d"]):
        h, w = sizes[i]
        assert np.array_equal(masks[i, :h, :w], union[case])
    assert load(work, "imgs_id_test").tolist() == ["cafe"]
    assert not (work / "imgs_truth_test.npy").exists()


def test_palette_label_masks_and_label_maps(tmp_path):
    names = write_pairs(tmp_path / "img", tmp_path / "msk", [(40, 40)] * 4, classes=2)
    labels = read_labels(tmp_path / "msk" / f"{names[0]}.png")
    assert set(np.unique(labels)) == {0, 1, 2}
    work = tmp_path / "work"
    flags = ["--images", tmp_path / "img", "--masks", tmp_path / "msk", "--holdout", 1]
    convert(work, *flags, "--classes", 2)
    assert np.array_equal(load(work, "imgs_mask_train")[0], labels)  # indices, not palette colours
    assert json.loads((work / "data.json").read_text()) == {"classes": 2}
    assert set(np.unique(load(work, "imgs_truth_test"))) == {0, 1, 2}

    result = convert(tmp_path / "binary", *flags, check=False)  # labels 2 in a binary task
    assert (result.returncode == 2 and f"{names[0]}.png" in result.stderr and
            "--label-map" in result.stderr)
    assert not any((tmp_path / "binary").glob("*.npy"))
    convert(tmp_path / "binary", *flags, "--label-map", "2:0")  # nerve only: vessels are background
    assert np.array_equal(load(tmp_path / "binary", "imgs_mask_train")[0], labels == 1)
    convert(tmp_path / "inverted", *flags, "--label-map", "0:1", "1:0", "2:0")
    assert np.array_equal(load(tmp_path / "inverted", "imgs_mask_train")[0], labels == 0)


def test_holdout_takes_the_last_images_by_name(tmp_path):
    write_pairs(tmp_path / "img", tmp_path / "msk", [(16, 16)] * 12,
                names=[str(i) for i in range(12)])
    work = tmp_path / "work"
    convert(work, "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--holdout", 3)
    assert load(work, "imgs_id_test").tolist() == ["9", "10", "11"]
    assert len(load(work, "imgs_train")) == 9 and len(load(work, "imgs_truth_test")) == 3
    assert np.array_equal(
        load(work, "imgs_truth_test")[2],
        read_gray(tmp_path / "msk" / "11.png") // 255)


def test_bad_folders_are_one_line_errors(tmp_path):
    write_pairs(tmp_path / "img", tmp_path / "msk", [(16, 20)] * 3)
    flags = ["--images", tmp_path / "img", "--masks", tmp_path / "msk", "--holdout", 1]
    work = tmp_path / "work"
    (tmp_path / "msk" / "img1.png").unlink()
    result = convert(work, *flags, check=False)
    assert (result.returncode == 2 and "img1.png has no mask" in result.stderr and
            "Traceback" not in result.stderr)
    convert(work, *flags, "--skip-unpaired")
    assert len(load(work, "imgs_train")) == 1

    cv2.imwrite(str(tmp_path / "msk" / "img1.png"), np.zeros((10, 10), np.uint8))
    result = convert(tmp_path / "w2", *flags, check=False)
    assert (result.returncode == 2 and
            "img1.png is 10x10 but its image img1.png is 20x16" in result.stderr)
    cv2.imwrite(str(tmp_path / "img" / "img1.png"), np.zeros((16, 20), np.uint16))
    result = convert(tmp_path / "w2", *flags, check=False)
    assert result.returncode == 2 and "not 8-bit" in result.stderr
    assert not (tmp_path / "w2").exists() or not any((tmp_path / "w2").glob("*.npy"))
    result = convert(tmp_path / "w3", "--images", tmp_path / "img", "--masks", tmp_path / "msk",
                     check=False)
    assert result.returncode == 2 and "--test-images" in result.stderr


def test_the_competition_layout_clears_an_earlier_folder_run(tmp_path):
    from test_data import make_competition

    write_pairs(tmp_path / "img", tmp_path / "msk", [(16, 16), (20, 12), (16, 16)], classes=2)
    work = tmp_path / "work"
    convert(work, "--images", tmp_path / "img", "--masks", tmp_path / "msk", "--holdout", 1,
            "--classes", 2)
    assert (work / "imgs_size_train.npy").exists() and (work / "imgs_truth_test.npy").exists()
    convert(work, "--raw", make_competition(tmp_path / "raw"))
    assert json.loads((work / "data.json").read_text()) == {"classes": 1}
    assert not any((work / f"{n}.npy").exists()
                   for n in ("imgs_size_train", "imgs_size_test", "imgs_truth_test"))


def test_real_isbi_membranes_through_the_four_scripts(tmp_path):
    """Binary membranes (label value 0 marks a membrane): flags only, tiny settings."""
    isbi = shared("isbi2012")
    work = tmp_path / "work"
    convert(work, "--images", isbi / "image", "--masks", isbi / "label", "--label-map", "0:1",
            "255:0", "--holdout", 6)
    assert load(work, "imgs_id_test").tolist() == [str(i) for i in range(24, 30)]
    truth = load(work, "imgs_truth_test")
    assert 0.1 < truth.mean() < 0.4  # membranes are the minority
    result = run_script("train.py", "--workdir", work, "--epochs", 1, "--patch", 128, "--width", 8,
                        "--depth", 3, "--folds", 4, "--batch-size", 8)
    assert "class 1: Dice" in result.stdout and "IoU" in result.stdout
    run_script("predict.py", "--workdir", work, "-q")
    masks = load(work, "imgs_mask_test")
    assert masks.shape == (6, 512, 512) and set(np.unique(masks)) == {0, 1}
    result = run_script("submission.py", "--workdir", work, "-q")
    dice = float(result.stdout.split("class 1: Dice")[1].split()[0])
    assert dice > 0.5  # better than nothing: all empty scores 0
