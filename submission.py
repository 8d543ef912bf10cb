"""Run-length encode the final test masks into submission.csv (and submit it to Kaggle).

    python submission.py                      # work/imgs_mask_test.npy -> work/submission.csv
    python submission.py --submit -m "unet"   # ... then upload it and print the public score
    python submission.py --scores             # list recent submissions with their scores
    python submission.py --check other.csv    # validate an existing CSV (then --truth, --submit use it)

The masks are encoded exactly as predict.py wrote them: no threshold or clean-up here.
Encoding: pairs of 1-indexed start and run length, pixels numbered top to bottom, then
left to right (column-major); an empty field for an empty mask. Other competitions:
--id-column, --mask-column, --rle-order C (row-major), --rle-start 0. Label masks (0..K)
give one row per image and class, with id <id>_<class>. Where data.py kept the test set's
masks (imgs_truth_test.npy), the CSV is scored against them, class by class.
"""

import re

import numpy as np

import common
from common import UserError, log

HEADER = "img,pixels"


def get_args():
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--output", help="CSV to write (default: <workdir>/submission.csv)")
    p.add_argument("--check", metavar="CSV", help="validate this existing CSV against the test set instead of "
                                                  "writing one; --truth and --submit then use it")
    p.add_argument("--truth", help="folder of <id>_mask.tif answers: print the CSV's local score")
    p.add_argument("--submit", action="store_true", help="validate and upload the CSV to Kaggle")
    p.add_argument("-m", "--message", default="U-Net starter kit", help="submission description")
    p.add_argument("--scores", action="store_true", help="list recent submissions and exit")
    p.add_argument("--competition", default=common.COMPETITION, help="Kaggle competition slug")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the score")
    p.add_argument("--id-column", default="img", help="header of the id column")
    p.add_argument("--mask-column", default="pixels", help="header of the run-length column")
    p.add_argument("--rle-order", choices=["F", "C"], default="F",
                   help="pixel numbering: F column-major (top to bottom first), C row-major (left to right first)")
    p.add_argument("--rle-start", type=int, choices=[1, 0], default=1, help="number of the first pixel")
    return p.parse_args()


# ---------------------------------------------------------------- run-length encoding

def rle_encode(mask, order="F", start=1):
    """'start length start length ...' of a 2-D binary mask, column-major (order F) or row-major
    (C), pixels numbered from `start`."""
    mask = np.asarray(mask)
    if not mask.any():   # most frames: skip the reordered copy
        return ""
    edges = np.flatnonzero(np.diff(mask.ravel(order=order) > 0, prepend=False, append=False)) + start
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
    if any(len(n) > 18 for n in numbers):   # beyond int64, and beyond any image
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

def row_ids(ids, classes):
    """The CSV's ids: the images' own for binary masks, <id>_<class> for label masks."""
    if classes == 1:
        return list(ids)
    return [f"{i}_{c}" for i in ids for c in range(1, classes + 1)]


def write_submission(path, masks, ids, quiet, sizes=None, classes=1, header=HEADER, rle=("F", 1)):
    """One row per image (per image and class for label masks), sorted by id; each mask at
    its own size where sizes (H, W) are given."""
    order = np.argsort(ids, kind="stable")
    with common.atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(header + "\n")
        for i in common.progress(order, quiet, desc="encode"):
            mask = np.asarray(masks[i]) if sizes is None else np.asarray(masks[i])[:sizes[i][0], :sizes[i][1]]
            if classes == 1:
                f.write(f"{ids[i]},{rle_encode(mask, *rle)}\n")
            for c in range(1, classes + 1) if classes > 1 else ():
                f.write(f"{ids[i]}_{c},{rle_encode(mask == c, *rle)}\n")


def read_submission(path, shape, expected_ids=None, header=HEADER, rle=("F", 1)):
    """{id: run string}, with every problem raised as a UserError naming the line. shape: the
    masks' (H, W), or {id: (H, W)}. Ids are integers unless expected_ids are text."""
    as_int = expected_ids is None or all(isinstance(i, (int, np.integer)) for i in expected_ids)
    rows = {}
    with open(path, encoding="utf-8", errors="replace") as f:   # undecodable bytes fail the checks below
        if f.readline().strip() != header:
            raise UserError(f"{path}: the first line must be '{header}'")
        for n, line in enumerate(f, start=2):
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+),([0-9 ]*)", line.rstrip("\r\n"))
            if not match:
                raise UserError(f"{path}:{n}: expected '<id>,<runs>', got {line.strip()[:60]!r}")
            i = match.group(1)
            if as_int:
                if not re.fullmatch(r"[0-9]{1,18}", i):
                    raise UserError(f"{path}:{n}: the id {i!r} is not an integer")
                i = int(i)
            if i in rows:
                raise UserError(f"{path}:{n}: id {i} appears twice")
            if isinstance(shape, dict) and i not in shape:
                raise UserError(f"{path}:{n}: id {i} is not in the test set")
            try:
                # Checks every run without drawing the mask (the order does not change the checks).
                parse_runs(match.group(2), shape[i] if isinstance(shape, dict) else shape, rle[1])
            except ValueError as e:
                raise UserError(f"{path}:{n}: id {i}: {e}") from None
            rows[i] = match.group(2).strip()
    if expected_ids is not None and set(map(str, rows)) != set(map(str, expected_ids)):
        missing = sorted(set(map(str, expected_ids)) - set(map(str, rows)))[:5]
        extra = sorted(set(map(str, rows)) - set(map(str, expected_ids)))[:5]
        raise UserError(f"{path}: ids differ from the test set (missing {missing}, unexpected {extra}): "
                        f"run `python predict.py` and `python submission.py` again")
    return rows


def sample_ids(raw, column="img"):
    path = raw / "sample_submission.csv"
    if not path.exists():
        return None
    import pandas as pd
    try:
        table = pd.read_csv(path, dtype=str)
    except Exception as e:   # unparsable: the same fix whatever the cause
        raise UserError(f"{path} is damaged ({type(e).__name__}): download it again") from None
    if column not in table:
        raise UserError(f"{path} has no column {column!r} (it has {', '.join(table.columns)}): set --id-column")
    return table[column].to_numpy()


def local_score(rows, truth_dir, shape):
    import cv2
    scores = []
    for i, runs in rows.items():
        truth_path = common.Path(truth_dir) / f"{i}_mask.tif"
        truth = cv2.imread(str(truth_path), cv2.IMREAD_GRAYSCALE)
        if truth is None:
            raise UserError(f"{truth_path} not found or unreadable: --truth needs <id>_mask.tif for every test id")
        if truth.shape != tuple(shape):
            raise UserError(f"{truth_path} is {truth.shape[1]}x{truth.shape[0]}, the test images "
                            f"{shape[1]}x{shape[0]}: give --truth this test set's answers")
        scores.append(common.dice_per_image(rle_decode(runs, shape)[None], truth[None] > 0)[0])
    return float(np.mean(scores))


def truth_scores(rows, truth, ids, sizes, classes, rle):
    """Per-class Dice and IoU of the CSV's masks (decoded again) against data.py's test masks."""
    pred = np.zeros(truth.shape, np.uint8)
    for n, i in enumerate(ids):
        h, w = sizes[n] if sizes is not None else truth.shape[1:]
        for c in range(1, classes + 1):
            key = i if classes == 1 else f"{i}_{c}"
            pred[n, :h, :w][rle_decode(rows[key], (h, w), *rle) > 0] = c
    return common.class_scores(pred, np.asarray(truth), classes)


# ---------------------------------------------------------------- main

def print_scores(competition):
    if common.in_kaggle_notebook():
        raise UserError("--scores needs Kaggle's API, which the kit never calls from a notebook: "
                        "run it on your own machine, or see the competition's Submissions page")
    import kaggle_io
    subs = kaggle_io.submissions(competition)
    for s in subs:
        score = "" if s["public_score"] is None else s["public_score"]
        print(f"{s['date']}  {s['status']:<10} {score:>8}  {s['description']}")
    if not subs:
        print(f"no submissions to {competition} yet")


def main():
    args = get_args()
    common.setup_logging(args)
    if args.scores:
        return print_scores(args.competition)
    work = args.workdir
    output = common.Path(args.output) if args.output else work / "submission.csv"
    fix = "run `python data.py` and `python predict.py` first"
    ids = common.load_npy(work / "imgs_id_test.npy", "test id array", fix)
    classes = common.load_classes(work)
    sizes = common.load_sizes(work, "test", len(ids))
    expected = sample_ids(args.raw, args.id_column)
    if expected is not None and set(expected.tolist()) != set(map(str, row_ids(ids, classes))):
        raise UserError(f"the test ids in {work} differ from {args.raw}/sample_submission.csv: "
                        f"run `python data.py` again on the full test set")
    test_shape = common.load_npy(work / "imgs_test.npy", "test image array", fix, mmap=True).shape

    header, rle = f"{args.id_column},{args.mask_column}", (args.rle_order, args.rle_start)
    if args.check:
        output = common.Path(args.check)
        if not output.is_file():
            raise UserError(f"{output} not found: give --check the path of a submission CSV")
    else:
        masks = common.load_npy(work / "imgs_mask_test.npy", "mask array", fix, mmap=True)
        valid = masks.dtype == np.uint8 and masks[:16].max(initial=0) <= classes
        if masks.shape[:3] != test_shape[:3] or len(masks) != len(ids) or not valid:
            kind = "binary masks" if classes == 1 else f"label masks 0..{classes}"
            raise UserError(f"{work}/imgs_mask_test.npy (shape {masks.shape}, {masks.dtype}) does not match the "
                            f"test set ({len(ids)} ids, images {test_shape}) as {kind}: "
                            f"run `python predict.py` again")
        write_submission(output, masks, ids, args.quiet, sizes, classes, header, rle)
    shape = test_shape[1:3] if sizes is None else {
        key: tuple(sizes[n]) for n, i in enumerate(ids) for key in row_ids([i], classes)}
    rows = read_submission(output, shape, row_ids(ids, classes), header, rle)
    empty = sum(1 for r in rows.values() if not r)
    log.info(f"{len(rows)} rows ({empty} empty) {'in' if args.check else '->'} {output}")
    if args.truth:
        print(f"local score (mean Dice): {local_score(rows, args.truth, test_shape[1:3]):.4f}")
    elif (work / "imgs_truth_test.npy").exists():
        truth = common.load_npy(work / "imgs_truth_test.npy", "test mask array", "run `python data.py` again", mmap=True)
        scores = truth_scores(rows, truth, ids, sizes, classes, rle)
        print(f"local score (mean Dice): {np.mean([d for d, _ in scores.values()]):.4f}  "
              f"(test masks kept by data.py; mean over images, then classes)\n{common.format_class_scores(scores)}")
    if args.submit and common.in_kaggle_notebook():
        # Notebooks run offline: Kaggle takes the submission from the notebook's output.
        log.info(f"in a Kaggle notebook: not uploading; {output} is the notebook's output, "
                 f"submit the notebook to the competition from Kaggle's web page")
    elif args.submit:
        import kaggle_io
        score = kaggle_io.submit(args.competition, output, args.message, timeout=args.timeout, quiet=args.quiet)
        print(f"public score: {score}")


if __name__ == "__main__":
    common.run(main)
