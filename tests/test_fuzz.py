"""Arbitrary text into the run-length decoder and the submission validator: what they cannot
read they refuse with their own error (ValueError, UserError), never a crash, and what they
accept survives a round trip."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.files import UserError
from kit.rle import read_submission, rle_decode, rle_encode, write_submission

SHAPE = (7, 9)  # 63 pixels: small enough that random runs often fit
numbers = st.lists(st.integers(0, 70), max_size=8).map(lambda ns: " ".join(map(str, ns)))
increasing = st.lists(st.integers(1, 12), max_size=8).map(
    lambda steps: " ".join(str(n) for n in np.cumsum(steps)))  # often valid runs
huge = st.lists(st.integers(0, 2**70), max_size=4).map(lambda ns: " ".join(map(str, ns)))
any_runs = st.one_of(st.text(), st.text(alphabet="0123456789 \t-+"), numbers, increasing, huge)


def normalised(runs):
    return " ".join(str(int(n)) for n in runs.split())


@settings(max_examples=600, deadline=None)
@given(any_runs)
def test_rle_decode_accepts_or_says_why(text):
    try:
        mask = rle_decode(text, SHAPE)
    except ValueError:
        return
    assert mask.shape == SHAPE and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert rle_encode(mask) == normalised(text)


row = st.tuples(st.one_of(st.integers(0, 40).map(str), st.text(max_size=4)),
                st.one_of(increasing, any_runs)).map(lambda r: f"{r[0]},{r[1]}")
csv_text = st.one_of(
    st.text(),
    st.lists(row, max_size=6).map(lambda rows: "img,pixels\n" + "\n".join(rows) + "\n"),
    st.lists(row, max_size=6).map(lambda rows: "img,pixels\r\n" + "\r\n".join(rows))).map(
        lambda text: text.encode("utf-8", "surrogatepass"))
csv_bytes = st.one_of(csv_text, st.binary(), st.binary().map(lambda b: b"img,pixels\n1," + b))


@settings(max_examples=600, deadline=None)
@given(csv_bytes, st.one_of(st.none(), st.lists(st.integers(0, 40), max_size=6)))
def test_read_submission_accepts_or_says_why(tmp_path_factory, content, expected):
    path = tmp_path_factory.getbasetemp() / "fuzz.csv"
    path.write_bytes(content)
    try:
        rows = read_submission(path, SHAPE, expected)
    except UserError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    if expected is not None:
        assert set(rows) == set(expected)
    # What was accepted is written back identically by the kit's own encoder.
    ids = np.array(sorted(rows), np.int64)
    masks = np.array([rle_decode(rows[i], SHAPE) for i in ids], np.uint8).reshape(len(ids), *SHAPE)
    again = path.with_name("again.csv")
    write_submission(again, masks, ids, quiet=True)
    assert read_submission(again, SHAPE) == {i: normalised(runs) for i, runs in rows.items()}
