"""Run-length encoding against a slow, obviously correct reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kit.rle import read_submission, rle_decode, rle_encode, write_submission


def reference_encode(mask):
    """Walk the pixels top to bottom, then left to right, numbering from 1."""
    h, w = mask.shape
    runs, start, length = [], None, 0
    for n in range(h * w):
        value = mask[n % h, n // h]
        if value and start is None:
            start, length = n + 1, 1
        elif value:
            length += 1
        elif start is not None:
            runs += [start, length]
            start = None
    if start is not None:
        runs += [start, length]
    return " ".join(map(str, runs))


@pytest.mark.parametrize(
    "mask, expected",
    [
        (np.zeros((3, 4), np.uint8), ""),
        (np.ones((3, 4), np.uint8), "1 12"),
        (np.array([[1, 0], [0, 0]], np.uint8), "1 1"),
        (np.array([[0, 0], [0, 1]], np.uint8), "4 1"),
        (np.array([[0, 1], [0, 1]], np.uint8), "3 2"),  # column-major: second column is 3..4
        (np.array([[1, 1], [0, 0], [1, 1]], np.uint8), "1 1 3 2 6 1")
    ])
def test_known_answers(mask, expected):
    assert rle_encode(mask) == expected
    assert reference_encode(mask) == expected
    assert np.array_equal(rle_decode(expected, mask.shape), mask)


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1)))
def test_round_trip_matches_reference(mask):
    text = rle_encode(mask)
    assert text == reference_encode(mask)
    assert np.array_equal(rle_decode(text, mask.shape), mask)


@pytest.mark.parametrize("text", ["1", "0 3", "3 0", "1 2 2 2", "5 2 1 2", "11 3", "a b", "1 -2"])
def test_decoder_rejects_malformed_runs(text):
    with pytest.raises(ValueError):
        rle_decode(text, (2, 5))


def random_masks(n, h, w, seed=0):
    """Empty, full, single pixels, borders and many-run masks at the competition's size."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        kind = i % 6
        if kind == 1:
            masks[i] = 1
        elif kind == 2:
            masks[i, rng.integers(h), rng.integers(w)] = 1
        elif kind == 3:
            masks[i, [0, -1], :] = 1
            masks[i, :, [0, -1]] = 1
        elif kind == 4:
            masks[i] = rng.random((h, w)) < rng.uniform(0.01, 0.9)
        elif kind == 5:
            y, x = rng.integers(0, h - 40), rng.integers(0, w - 60)
            masks[i, y:y + rng.integers(1, 40), x:x + rng.integers(1, 60)] = 1
    return masks


@pytest.mark.slow  # a competition's volume: 1200 masks of 420x580
def test_thousands_of_full_size_masks_survive_the_csv(tmp_path):
    masks = random_masks(1200, 420, 580)
    ids = np.random.default_rng(1).permutation(len(masks)) + 1
    path = tmp_path / "submission.csv"
    write_submission(path, masks, ids, quiet=True)
    rows = read_submission(path, (420, 580), ids)
    assert list(rows) == sorted(ids.tolist())  # sorted by id
    for i, mask in zip(ids, masks):
        assert np.array_equal(rle_decode(rows[i], (420, 580)), mask)
