"""What data.py does, in process and on a few tiny files: the demo competition (kit/demo.py),
which files make the sets (kit/layouts.py), and the arrays they become and are read back as
(kit/arrays.py). The scripts themselves: test_data.py, test_layouts.py (slow)."""

import argparse

import cv2
import numpy as np
import pytest

from folder_sets import write_pairs
from kit import arrays, demo, layouts
from kit.files import UserError, output_set
from test_data import make_competition


def data_args(**flags):
    """data.py's options for write_sets and layouts.folders, defaults as data.py has them."""
    defaults = dict(channels=1, classes=1, label_map=[], workers=2, quiet=True, images=None,
                    masks=None, mask_suffix="", dsb=None, test_images=None, test_masks=None,
                    holdout=0, skip_unpaired=False)
    return argparse.Namespace(**{**defaults, **flags})


# ---------------------------------------------------------------- kit/demo.py


def test_the_demo_is_a_competition_in_the_real_layout_and_repeats_for_a_seed(tmp_path):
    demo.make_demo(tmp_path / "a", 42, 58, 2, seed=3, quiet=True)
    train = sorted((tmp_path / "a/train").glob("*_mask.tif"))
    assert len(train) == 2 * 20 and len(list((tmp_path / "a/train").glob("*.tif"))) == 80
    tests = sorted((tmp_path / "a/test").glob("*.tif"))
    assert [int(p.stem) for p in sorted(tests, key=lambda p: int(p.stem))] == list(range(1, 41))
    assert len(list((tmp_path / "a/test_masks").glob("*_mask.tif"))) == 40
    assert b"\x05\x00" in (tmp_path / "a/train/1_1.tif").read_bytes()  # LZW, as Kaggle's
    masks = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in train])
    assert masks.shape == (40, 42, 58) and set(np.unique(masks)) <= {0, 255}
    share = (masks.reshape(40, -1).max(1) > 0).mean()
    assert 0.15 < share < 0.65  # about 40% of the frames hold a nerve
    demo.make_demo(tmp_path / "b", 42, 58, 2, seed=3, quiet=True)
    same = [(tmp_path / f"{run}/train/2_7.tif").read_bytes() for run in "ab"]
    assert same[0] == same[1]
    with pytest.raises(UserError, match="already holds files"):
        demo.make_demo(tmp_path / "a", 42, 58, 2, seed=3, quiet=True)


# ---------------------------------------------------------------- kit/layouts.py


def test_names_sort_naturally_and_pairs_need_both_halves(tmp_path):
    assert sorted(["a10", "b1", "a2", "a1"], key=layouts.natural) == ["a1", "a2", "a10", "b1"]
    write_pairs(tmp_path / "img", tmp_path / "msk", [(8, 8)] * 3, names=["x10", "x2", "x1"])
    items = layouts.list_pairs(tmp_path / "img", tmp_path / "msk", "", False)
    assert [stem for stem, _, _ in items] == ["x1", "x2", "x10"]
    assert all(masks == [tmp_path / "msk" / f"{stem}.png"] for stem, _, masks in items)
    (tmp_path / "msk/x2.png").unlink()
    with pytest.raises(UserError, match="x2.png has no mask x2.png"):
        layouts.list_pairs(tmp_path / "img", tmp_path / "msk", "", False)
    assert len(layouts.list_pairs(tmp_path / "img", tmp_path / "msk", "", True)) == 2
    (tmp_path / "img/x2.png").unlink()  # now an image and its mask both gone: x2 is not paired
    (tmp_path / "img/x1.png").unlink()  # and x1's mask is an orphan
    with pytest.raises(UserError, match="x1.png has no image x1.png"):
        layouts.list_pairs(tmp_path / "img", tmp_path / "msk", "", False)
    with pytest.raises(UserError, match="--mask-suffix"):
        layouts.list_pairs(tmp_path / "img", tmp_path / "img", "", False)


def test_the_competition_layout_gives_subjects_from_names_and_integer_test_ids(tmp_path):
    raw = make_competition(tmp_path / "raw", subjects=(3, 1), frames=2, test_ids=(10, 2, 7))
    sets = layouts.competition(raw, skip_unpaired=False)
    assert [stem for stem, _, _ in sets.train] == ["1_1", "1_2", "3_1", "3_2"]
    assert sets.subjects.tolist() == [1, 1, 3, 3] and not sets.scored
    assert sets.ids.tolist() == [2, 7, 10] and [i for i, _, _ in sets.test] == [2, 7, 10]
    (raw / "train/scan.tif").write_bytes((raw / "train/1_1.tif").read_bytes())
    with pytest.raises(UserError, match="scan.tif is not named <subject>_<frame>.tif"):
        layouts.competition(raw, False)
    (raw / "train/scan.tif").unlink()
    (raw / "test/07.tif").write_bytes((raw / "test/7.tif").read_bytes())
    with pytest.raises(UserError, match="have the same id"):
        layouts.competition(raw, False)


def test_folders_with_a_holdout_and_dsb_instance_folders(tmp_path):
    write_pairs(tmp_path / "img", tmp_path / "msk", [(8, 8)] * 5, names=[f"n{i}" for i in range(5)])
    args = data_args(images=tmp_path / "img", masks=tmp_path / "msk", holdout=2)
    sets = layouts.folders(args)
    assert [s for s, _, _ in sets.train] == ["n0", "n1", "n2"] and sets.ids.tolist() == ["n3", "n4"]
    assert sets.subjects.tolist() == [0, 1, 2] and sets.scored  # each image its own subject
    with pytest.raises(UserError, match="must leave training images"):
        layouts.folders(data_args(images=tmp_path / "img", masks=tmp_path / "msk", holdout=5))
    with pytest.raises(UserError, match="no test set"):
        layouts.folders(data_args(images=tmp_path / "img", masks=tmp_path / "msk"))

    dsb = tmp_path / "dsb"
    for case, instances in (("b", 2), ("a", 3)):
        (dsb / case / "images").mkdir(parents=True)
        (dsb / case / "masks").mkdir()
        cv2.imwrite(str(dsb / case / "images" / f"{case}.png"), np.zeros((6, 6), np.uint8))
        for k in range(instances):
            cv2.imwrite(str(dsb / case / "masks" / f"m{k}.png"), np.zeros((6, 6), np.uint8))
    assert layouts.is_dsb(dsb) and not layouts.is_dsb(tmp_path / "img")
    items = layouts.list_dsb(dsb)
    assert [(i, len(masks)) for i, _, masks in items] == [("a", 3), ("b", 2)]


# ---------------------------------------------------------------- kit/arrays.py


def test_sets_of_mixed_sizes_become_arrays_with_their_sizes_and_read_back(tmp_path):
    sizes = [(12, 16), (8, 20), (12, 16)]
    write_pairs(tmp_path / "img", tmp_path / "msk", sizes, names=["a", "b", "c"])
    write_pairs(tmp_path / "test", tmp_path / "test_msk", [(10, 10)], names=["t"], seed=1)
    args = data_args(images=tmp_path / "img", masks=tmp_path / "msk", test_images=tmp_path / "test")
    work = tmp_path / "work"
    work.mkdir()
    with output_set(work, "data.py") as out:
        arrays.write_sets(layouts.folders(args), out, args, one_size=False)
    images, masks, subjects = arrays.load_training_set(work)
    assert images.shape == masks.shape == (3, 12, 20) and subjects.tolist() == [0, 1, 2]
    assert arrays.load_sizes(work, "train", 3).tolist() == [list(s) for s in sizes]
    assert arrays.load_sizes(work, "test", 1) is None  # one size: the shape says it
    test, ids = arrays.load_test_set(work)
    assert test.shape == (1, 10, 10) and ids.tolist() == ["t"]
    source = cv2.imread(str(tmp_path / "img/b.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(images[1, :8, :20], source) and not images[1, 8:].any()
    assert set(np.unique(masks)) == {0, 1} and arrays.load_classes(work) == 1

    del images, masks  # the memory maps, before their files are replaced
    with output_set(work, "data.py") as out:
        arrays.keep_training_frames(out, np.array([0, 2]))
    images, masks, subjects = arrays.load_training_set(work)
    assert len(images) == 2 and subjects.tolist() == [0, 2]
    assert arrays.load_sizes(work, "train", 2).tolist() == [[12, 16], [12, 16]]


def test_a_run_writes_all_its_arrays_or_none_and_clears_an_earlier_runs_extras(tmp_path):
    sizes = [(12, 16), (8, 20)]
    write_pairs(tmp_path / "img", tmp_path / "msk", sizes, names=["a", "b"])
    args = data_args(images=tmp_path / "img", masks=tmp_path / "msk", test_images=tmp_path / "img")
    work = tmp_path / "work"
    work.mkdir()
    np.save(arrays.path(work, arrays.TEST_TRUTH), np.zeros((1, 2, 2), np.uint8))  # an earlier run
    with pytest.raises(RuntimeError):
        with output_set(work, "data.py") as out:
            arrays.write_sets(layouts.folders(args), out, args, one_size=False)
            raise RuntimeError("a file fails to decode")
    assert sorted(p.name for p in work.iterdir()) == ["imgs_truth_test.npy"]  # none of them
    with output_set(work, "data.py") as out:
        arrays.write_sets(layouts.folders(args), out, args, one_size=False)
    assert arrays.path(work, arrays.size_name("train")).exists()  # mixed sizes: recorded
    assert not arrays.path(work, arrays.TEST_TRUTH).exists()  # not this run's: cleared
    assert arrays.load_classes(work) == 1 and not list(work.glob(".*.tmp*"))  # no temporaries


def test_arrays_that_do_not_belong_together_are_one_line_errors(tmp_path):
    work = tmp_path
    with pytest.raises(UserError, match="imgs_train.npy not found: run `python data.py` first"):
        arrays.load_training_set(work)
    np.save(arrays.path(work, arrays.TRAIN_IMAGES), np.zeros((3, 4, 4), np.uint8))
    np.save(arrays.path(work, arrays.TRAIN_MASKS), np.zeros((2, 4, 4), np.uint8))
    np.save(arrays.path(work, arrays.SUBJECTS), np.zeros(3, np.int32))
    with pytest.raises(UserError, match="do not match"):
        arrays.load_training_set(work)
    np.save(arrays.path(work, arrays.TRAIN_MASKS), np.zeros((3, 4, 4), np.float32))
    with pytest.raises(UserError, match="are not uint8"):
        arrays.load_training_set(work)
    np.save(arrays.path(work, arrays.size_name("train")), np.zeros((2, 2), np.int32))
    with pytest.raises(UserError, match=r"holds \(2, 2\) sizes for 3 images"):
        arrays.load_sizes(work, "train", 3)
    np.save(arrays.path(work, arrays.TEST_IMAGES), np.zeros((2, 4, 4), np.uint8))
    np.save(arrays.path(work, arrays.TEST_IDS), np.arange(3))
    with pytest.raises(UserError, match="disagree"):
        arrays.load_test_set(work)
