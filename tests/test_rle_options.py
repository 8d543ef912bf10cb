"""Other competitions' run-length conventions and CSV headers, as flags of submission.py."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import run_script
from kit.rle import read_submission, rle_decode, rle_encode, write_submission


def reference_encode(mask, order, start):
    """Walk the pixels in the given order, numbering the first one `start`."""
    flat = mask.ravel(order=order)
    runs, n = [], 0
    while n < len(flat):
        if flat[n]:
            length = 1
            while n + length < len(flat) and flat[n + length]:
                length += 1
            runs += [n + start, length]
            n += length
        else:
            n += 1
    return " ".join(map(str, runs))


@pytest.mark.parametrize("order, start, expected", [("F", 1, "3 2"), ("C", 1, "2 1 4 1"),
                                                    ("C", 0, "1 1 3 1"), ("F", 0, "2 2")])
def test_known_answers(order, start, expected):
    mask = np.array([[0, 1], [0, 1]], np.uint8)  # the right-hand column
    assert rle_encode(mask, order, start) == expected
    assert np.array_equal(rle_decode(expected, mask.shape, order, start), mask)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 1)),
    st.sampled_from(["F", "C"]), st.sampled_from([0, 1]))
def test_round_trip_in_every_convention(mask, order, start):
    text = rle_encode(mask, order, start)
    assert text == reference_encode(mask, order, start)
    assert np.array_equal(rle_decode(text, mask.shape, order, start), mask)


def test_zero_indexed_runs_reject_what_one_indexed_allow():
    with pytest.raises(ValueError):
        rle_decode("0 2", (2, 2), "F", 1)  # pixel 0 does not exist when counting from 1
    with pytest.raises(ValueError):
        rle_decode("3 2", (2, 2), "F", 0)  # runs past the last pixel (3)
    assert rle_decode("0 2", (2, 2), "F", 0)[:, 0].all()


def test_text_ids_and_sizes_of_their_own(tmp_path):
    masks = np.zeros((2, 6, 8), np.uint8)
    masks[0, :4, :5] = 1  # image a is 4x5, b is 6x8
    masks[1, 5, 7] = 1
    ids, sizes = np.array(["b", "a"]), np.array([[4, 5], [6, 8]])
    write_submission(tmp_path / "s.csv", masks, ids, True, sizes, header="id,rle_mask",
                     rle=("C", 0))
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines == ["id,rle_mask", "a,47 1", "b,0 20"]
    rows = read_submission(tmp_path / "s.csv", {
        "b": (4, 5),
        "a": (6, 8)
    }, list(ids), "id,rle_mask", ("C", 0))
    assert rows == {"a": "47 1", "b": "0 20"}


@pytest.mark.slow
def test_submission_flags_for_another_competition(tmp_path):
    """A Carvana-like convention: header 'img,rle_mask', row-major runs, ids from
    sample_submission.csv."""
    work, raw = tmp_path / "work", tmp_path / "raw"
    work.mkdir()
    raw.mkdir()
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 10, 12)) < 0.3).astype(np.uint8)
    np.save(work / "imgs_test.npy", np.zeros_like(masks))
    np.save(work / "imgs_mask_test.npy", masks)
    np.save(work / "imgs_id_test.npy", np.array(["x1", "x2", "x3"]))
    (work / "data.json").write_text(json.dumps({"classes": 1}))
    (raw / "sample_submission.csv").write_text("img,rle_mask\nx3,1 1\nx1,1 1\nx2,1 1\n")
    flags = ["--workdir", work, "--raw", raw, "--mask-column", "rle_mask", "--rle-order", "C", "-q"]
    run_script("submission.py", *flags)
    lines = (work / "submission.csv").read_text().splitlines()
    assert lines[0] == "img,rle_mask"
    for line, mask in zip(lines[1:], masks):
        assert np.array_equal(rle_decode(line.split(",")[1], (10, 12), "C", 1), mask)
    result = run_script("submission.py", *flags, "--id-column", "ImageId", check=False)
    assert result.returncode == 2 and "no column 'ImageId'" in result.stderr
