"""Contradicting near-duplicates (kit/duplicates.py): found, listed, dropped; and on real frames."""

import csv

import cv2
import numpy as np
import pytest

from conftest import run_script, shared
from kit import duplicates

H, W = 84, 116


def texture(rng):
    """A frame with structure at the thumbnail's scale, as an ultrasound scan has."""
    noise = rng.normal(120, 40, (H, W)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 4) * 4 - 360, 0, 255).astype(np.uint8)


def disc(y=40, x=50, r=10):
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (x, y), r, 1, -1)
    return mask


def again(image, rng):
    """The same view once more: other speckle, a little brighter."""
    return np.clip(image * 1.05 + 6 + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)


def frames(seed=0):
    """Subject 1: frame 1 and its repeat 3 (mask empty), frame 2 and its repeat 4 (masks far
    apart), frame 5 and its repeat 6 (masks agree), distinct frames 7 to 9. Subject 2: a copy of
    frame 1 with a mask, which is another subject's and so no pair."""
    rng = np.random.default_rng(seed)
    a, b, c = texture(rng), texture(rng), texture(rng)
    images = [a, b, again(a, rng), again(b, rng), c, again(c, rng)]
    masks = [disc(), disc(20, 20), disc() * 0, disc(60, 95), disc(), disc(41, 51)]
    images += [texture(rng) for _ in range(3)]
    masks += [disc(), disc() * 0, disc(30, 30)]
    images.append(a)
    masks.append(disc() * 0)
    subjects = np.array([1] * 9 + [2])
    return np.stack(images), np.stack(masks), subjects


def test_near_duplicates_with_disagreeing_masks_are_found_and_nothing_else():
    images, masks, subjects = frames()
    pairs = duplicates.find(images, masks, subjects)
    assert [(i, j) for i, j, _, _ in pairs] == [(0, 2), (1, 3)]
    assert all(s >= duplicates.SIMILAR for _, _, s, _ in pairs)
    assert [d for _, _, _, d in pairs] == [0.0, 0.0]
    rows, dropped = duplicates.table(pairs, masks, subjects, [f"f{i}" for i in range(10)], True)
    assert [row[7] for row in rows] == ["b", ""]  # frame 2's mask is the empty one
    assert dropped == [2]  # masks that both hold something disagree: neither is dropped
    # Distinct frames are far below the threshold, not just under it.
    f = duplicates.thumbnails(images[6:9])
    assert (f @ f.T / f.shape[1])[np.triu_indices(3, 1)].max() < 0.5


def write_competition(raw, images, masks, subjects):
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir()
    for n, (image, mask, s) in enumerate(zip(images, masks, subjects), 1):
        cv2.imwrite(str(raw / "train" / f"{s}_{n}.tif"), image)
        cv2.imwrite(str(raw / "train" / f"{s}_{n}_mask.tif"), mask * 255)
    cv2.imwrite(str(raw / "test" / "1.tif"), images[0])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_data_py_lists_the_pairs_and_drops_the_empty_member(tmp_path):
    images, masks, subjects = frames()
    raw, work = tmp_path / "raw", tmp_path / "work"
    write_competition(raw, images, masks, subjects)
    result = run_script("data.py", "--raw", raw, "--workdir", work, "--drop-contradictions")
    said = "2 near-duplicate pair(s) with disagreeing masks (1 with one mask empty)"
    assert said in result.stdout
    rows = read_csv(work / duplicates.NAME)
    assert [(r["name_a"], r["name_b"], r["empty"], r["dropped"])
            for r in rows] == [("1_1", "1_3", "b", "1_3"), ("1_2", "1_4", "", "")]
    kept = np.load(work / "imgs_train.npy")
    assert len(kept) == 9 and np.array_equal(kept, np.delete(images, 2, axis=0))
    assert np.array_equal(np.load(work / "imgs_mask_train.npy"), np.delete(masks, 2, axis=0))
    assert np.load(work / "imgs_subject_train.npy").tolist() == [1] * 8 + [2]
    # Without the flag nothing is dropped, and the CSV says so.
    run_script("data.py", "--raw", raw, "--workdir", work, "-q")
    assert len(np.load(work / "imgs_train.npy")) == 10
    assert [r["dropped"] for r in read_csv(work / duplicates.NAME)] == ["", ""]


@pytest.mark.slow
def test_real_frames_of_subjects_1_and_2(tmp_path):
    """The three repeated views of subject 1 annotated once with the nerve, once without
    (1_9 and 1_14 are the same picture); the repeats whose masks agree are not listed."""
    sample = shared("nerve-kaggle-sample")
    work = tmp_path / "work"
    result = run_script("data.py", "--raw", sample, "--workdir", work, "--skip-unpaired")
    rows = read_csv(work / duplicates.NAME)
    print(result.stdout, *rows, sep="\n")
    assert [(r["name_a"], r["name_b"], r["empty"]) for r in rows] == [("1_9", "1_14", "a"),
                                                                      ("1_13", "1_29", "a"),
                                                                      ("1_35", "1_36", "a")]
