"""Run-length encoding and the submission CSV: writing it, reading it back with every row
checked, and scoring it against known masks.

Encoding: pairs of start and run length, pixels numbered top to bottom, then left to right
(column-major, order F) from 1, as the competition wants; order C (row-major) and start 0
for other competitions. An empty field for an empty mask. Label masks (0..K) give one row per
image and class, with the id <id>_<class>.
"""

import re
from pathlib import Path

import numpy as np

from kit import metrics
from kit.cli import progress
from kit.files import UserError
from kit.images import image_size, label_table, read_mask

HEADER = "img,pixels"

# ---------------------------------------------------------------- run-length encoding


def rle_encode(mask, order="F", start=1):
    """'start length start length ...' of a 2-D binary mask, column-major (order F) or row-major
    (C), pixels numbered from `start`."""
    mask = np.asarray(mask)
    if not mask.any():  # most frames: skip the reordered copy
        return ""
    edges = (np.flatnonzero(np.diff(mask.ravel(order=order) > 0, prepend=False, append=False)) +
             start)
    edges[1::2] -= edges[::2]
    return " ".join(map(str, edges.tolist()))


def rle_decode(text, shape, order="F", start=1):
    """The mask that rle_encode() turned into `text`; ValueError if the runs are malformed."""
    h, w = shape
    starts, ends = parse_runs(text, shape, start)
    flat = np.zeros(h * w + 1, np.int8)
    np.add.at(flat, starts, 1)
    np.add.at(flat, ends, -1)
    mask = (np.cumsum(flat[:-1]) > 0).astype(np.uint8)
    return mask.reshape((w, h)).T if order == "F" else mask.reshape((h, w))


def parse_runs(text, shape, start=1):
    """0-indexed starts and ends of the runs in `text`; ValueError if they are malformed."""
    h, w = shape
    numbers = text.split()
    if not all(n.isascii() and n.isdigit() for n in numbers):
        raise ValueError("runs must be positive integers")
    if any(len(n) > 18 for n in numbers):  # beyond int64, and beyond any image
        raise ValueError(f"a run lies outside the {w}x{h} image")
    runs = np.array(numbers, dtype=np.int64).reshape(-1, 2) if len(numbers) % 2 == 0 else None
    if runs is None:
        raise ValueError("runs must come in start/length pairs")
    starts, lengths = runs[:, 0] - start, runs[:, 1]
    ends = starts + lengths
    if (starts < 0).any() or (lengths < 1).any() or (ends > h * w).any():
        raise ValueError(f"a run lies outside the {w}x{h} image or is empty")
    if (starts[1:] <= ends[:-1]).any():
        raise ValueError("runs must be sorted and separated")
    return starts, ends


# ---------------------------------------------------------------- the CSV


def row_id(image_id, c, classes):
    """The CSV's id of class c of an image: the image's own for binary masks, <id>_<class> else."""
    return image_id if classes == 1 else f"{image_id}_{c}"


def row_ids(ids, classes):
    return [row_id(i, c, classes) for i in ids for c in range(1, classes + 1)]


def write_submission(path, masks, ids, quiet, sizes=None, classes=1, header=HEADER, rle=("F", 1)):
    """One row per image (per image and class for label masks), sorted by id; each mask at
    its own size where sizes (H, W) are given. Written to `path` as it goes: submission.py
    gives a temporary file, which replaces the CSV once read back and found valid."""
    order = np.argsort(ids, kind="stable")
    with open(path, "w") as f:
        f.write(header + "\n")
        for i in progress(order, quiet, desc="encode"):
            mask = np.asarray(masks[i])
            if sizes is not None:
                mask = mask[:sizes[i][0], :sizes[i][1]]
            for c in range(1, classes + 1):   # binary masks are their own class-1 mask
                runs = rle_encode(mask if classes == 1 else mask == c, *rle)
                f.write(f"{row_id(ids[i], c, classes)},{runs}\n")


def read_submission(path, shape, expected_ids=None, header=HEADER, rle=("F", 1), shown=None):
    """{id: run string}, with every problem raised as a UserError naming the line (of `shown`,
    default path: the file the user knows). shape: the masks' (H, W), or {id: (H, W)}. Ids are
    integers unless expected_ids are text."""
    name = shown or path
    as_int = expected_ids is None or all(isinstance(i, (int, np.integer)) for i in expected_ids)
    rows = {}
    with open(path, encoding="utf-8",
              errors="replace") as f:  # undecodable bytes fail the checks below
        if f.readline().strip() != header:
            raise UserError(f"{name}: the first line must be '{header}'")
        for n, line in enumerate(f, start=2):
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+),([0-9 ]*)", line.rstrip("\r\n"))
            if not match:
                raise UserError(f"{name}:{n}: expected '<id>,<runs>', got {line.strip()[:60]!r}")
            i = match.group(1)
            if as_int:
                if not re.fullmatch(r"[0-9]{1,18}", i):
                    raise UserError(f"{name}:{n}: the id {i!r} is not an integer")
                i = int(i)
            if i in rows:
                raise UserError(f"{name}:{n}: id {i} appears twice")
            if isinstance(shape, dict) and i not in shape:
                raise UserError(f"{name}:{n}: id {i} is not in the test set")
            try:
                # Checks every run without drawing the mask (the order does not change the checks).
                parse_runs(match.group(2), shape[i] if isinstance(shape, dict) else shape, rle[1])
            except ValueError as e:
                raise UserError(f"{name}:{n}: id {i}: {e}") from None
            rows[i] = match.group(2).strip()
    if expected_ids is not None and set(map(str, rows)) != set(map(str, expected_ids)):
        missing = sorted(set(map(str, expected_ids)) - set(map(str, rows)))[:5]
        extra = sorted(set(map(str, rows)) - set(map(str, expected_ids)))[:5]
        raise UserError(
            f"{name}: ids differ from the test set (missing {missing}, unexpected {extra}): "
            f"run `python predict.py` and `python submission.py` again")
    return rows


def sample_ids(raw, column="img"):
    path = raw / "sample_submission.csv"
    if not path.exists():
        return None
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str)
    except Exception as e:  # unparsable: the same fix whatever the cause
        raise UserError(f"{path} is damaged ({type(e).__name__}): download it again") from None
    if column not in table:
        raise UserError(
            f"{path} has no column {column!r} (it has {', '.join(table.columns)}): set --id-column")
    return table[column].to_numpy()


def local_score(rows, truth_dir, shape, rle=("F", 1)):
    """Mean Dice of the CSV's masks against <id>_mask.tif answers (the demo's test_masks/).
    shape: the masks' (H, W), or {id: (H, W)}."""
    scores = []
    for i, runs in rows.items():
        size = tuple(shape[i]) if isinstance(shape, dict) else tuple(shape)
        truth_path = Path(truth_dir) / f"{i}_mask.tif"
        if not truth_path.is_file():
            raise UserError(
                f"{truth_path} not found: --truth needs <id>_mask.tif for every test id")
        if image_size(truth_path) != size:
            h, w = image_size(truth_path)
            raise UserError(f"{truth_path} is {w}x{h}, its test image {size[1]}x{size[0]}: "
                            f"give --truth this test set's answers")
        truth = read_mask([truth_path], truth_path, size, label_table(1))
        scores.append(metrics.dice_per_image(rle_decode(runs, size, *rle)[None], truth[None])[0])
    return float(np.mean(scores))


def truth_scores(rows, truth, ids, sizes, classes, rle):
    """Per-class Dice and IoU of the CSV's masks (decoded again) against data.py's test masks."""
    pred = np.zeros(truth.shape, np.uint8)
    for n, i in enumerate(ids):
        h, w = sizes[n] if sizes is not None else truth.shape[1:]
        for c in range(1, classes + 1):
            pred[n, :h, :w][rle_decode(rows[row_id(i, c, classes)], (h, w), *rle) > 0] = c
    return metrics.class_scores(pred, np.asarray(truth), classes)
