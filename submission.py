"""Run-length encode the final test masks into submission.csv (and submit it to Kaggle).

    python submission.py                      # work/imgs_mask_test.npy -> work/submission.csv
    python submission.py --submit -m "unet"   # ... then upload it and print the public score
    python submission.py --scores             # list recent submissions with their scores
    python submission.py --check other.csv    # validate an existing CSV (--truth, --submit too)

The masks are encoded exactly as predict.py wrote them: no threshold or clean-up here (the
encoding: see kit/rle.py). Where data.py kept the test set's masks (imgs_truth_test.npy), or
--truth names a folder of answers, the CSV is read back and scored.
"""

import logging
from pathlib import Path

import numpy as np

from kit import arrays, cli, metrics, rle
from kit.files import COMPETITION, UserError, atomic_path, in_kaggle_notebook, workdir_lock

log = logging.getLogger(__name__)
FIX = "run `python data.py` and `python predict.py` first"


def get_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--output", type=Path, help="CSV to write (default: <workdir>/submission.csv)")
    p.add_argument(
        "--check", type=Path, metavar="CSV",
        help="validate this existing CSV instead of writing one; --truth and --submit then use it")
    p.add_argument("--truth", type=Path,
                   help="folder of <id>_mask.tif answers: print the CSV's local score")
    p.add_argument("--submit", action="store_true", help="validate and upload the CSV to Kaggle")
    p.add_argument("-m", "--message", default="U-Net starter kit", help="submission description")
    p.add_argument("--scores", action="store_true", help="list recent submissions and exit")
    p.add_argument("--competition", default=COMPETITION, help="Kaggle competition slug")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the score")
    p.add_argument("--id-column", default="img", help="header of the id column")
    p.add_argument("--mask-column", default="pixels", help="header of the run-length column")
    p.add_argument("--rle-order", choices=["F", "C"], default="F",
                   help="pixel numbering: F column-major (top to bottom first), C row-major")
    p.add_argument("--rle-start", type=int, choices=[1, 0], default=1,
                   help="number of the first pixel")
    return p.parse_args(argv)


def print_scores(competition):
    if in_kaggle_notebook():
        raise UserError("--scores needs Kaggle's API, which the kit never calls from a notebook: "
                        "run it on your own machine, or see the competition's Submissions page")
    from kit import kaggle_api

    subs = kaggle_api.submissions(competition)
    for s in subs:
        score = "" if s["public_score"] is None else s["public_score"]
        print(f"{s['date']}  {s['status']:<10} {score:>8}  {s['description']}")
    if not subs:
        print(f"no submissions to {competition} yet")


def check_ids(args, ids, classes):
    expected = rle.sample_ids(args.raw, args.id_column)
    if expected is not None and set(expected.tolist()) != set(map(str, rle.row_ids(ids, classes))):
        raise UserError(
            f"the test ids in {args.workdir} differ from {args.raw}/sample_submission.csv:"
            f" run `python data.py` again on the full test set")


def encode(args, output, ids, classes, sizes, test, options, shape):
    """Encode the final masks into `output`, which is replaced only by a CSV that reads back
    valid; its rows."""
    masks = arrays.load(args.workdir, arrays.TEST_MASKS, "mask array", FIX, mmap=True)
    valid = masks.dtype == np.uint8 and masks[:16].max(initial=0) <= classes
    if masks.shape[:3] != test.shape[:3] or len(masks) != len(ids) or not valid:
        kind = "binary masks" if classes == 1 else f"label masks 0..{classes}"
        raise UserError(f"{arrays.path(args.workdir, arrays.TEST_MASKS)} (shape {masks.shape}, "
                        f"{masks.dtype}) does not match the test set ({len(ids)} ids, images "
                        f"{test.shape}) as {kind}: run `python predict.py` again")
    arrays.check_predicted_from(args.workdir, test, ids)
    with atomic_path(output) as tmp:
        rle.write_submission(tmp, masks, ids, args.quiet, sizes, classes, *options)
        try:
            return rle.read_submission(tmp, shape, rle.row_ids(ids, classes), *options,
                                       shown=output.name)
        except UserError as e:
            raise UserError(f"{output} left as it was: the new CSV fails its check ({e}): run "
                            f"`python data.py` and `python predict.py` again") from None


def print_local_score(args, rows, ids, sizes, classes, shape, options):
    if args.truth:
        print(
            f"local score (mean Dice): {rle.local_score(rows, args.truth, shape, options[1]):.4f}")
        return
    truth = arrays.load(args.workdir, arrays.TEST_TRUTH, "test mask array", arrays.RERUN, mmap=True)
    scores = rle.truth_scores(rows, truth, ids, sizes, classes, options[1])
    print(f"local score (mean Dice): {metrics.overall(scores):.4f}  (test masks kept by data.py; "
          f"mean over images, then classes)\n{metrics.format_class_scores(scores)}")


def submit(args, output):
    if in_kaggle_notebook():
        # Notebooks run offline: Kaggle takes the submission from the notebook's output.
        log.info(f"in a Kaggle notebook: not uploading; {output} is the notebook's output, "
                 f"submit the notebook to the competition from Kaggle's web page")
        return
    from kit import kaggle_api

    score = kaggle_api.submit(args.competition, output, args.message, timeout=args.timeout,
                              quiet=args.quiet)
    print(f"public score: {score}")


def write_or_check(args):
    """Write the CSV (or take the one --check names), check it, score it where the truth is
    known, and submit it with --submit."""
    work = args.workdir
    ids = arrays.load(work, arrays.TEST_IDS, "test id array", FIX)
    classes = arrays.load_classes(work)
    sizes = arrays.load_sizes(work, "test", len(ids))
    check_ids(args, ids, classes)
    test = arrays.load(work, arrays.TEST_IMAGES, "test image array", FIX, mmap=True)
    options = (f"{args.id_column},{args.mask_column}", (args.rle_order, args.rle_start))
    output = args.check or args.output or work / "submission.csv"
    if args.check and not output.is_file():
        raise UserError(f"{output} not found: give --check the path of a submission CSV")
    shape = (test.shape[1:3] if sizes is None else {
        key: tuple(sizes[n])
        for n, i in enumerate(ids)
        for key in rle.row_ids([i], classes)
    })
    if args.check:
        rows = rle.read_submission(output, shape, rle.row_ids(ids, classes), *options)
    else:
        rows = encode(args, output, ids, classes, sizes, test, options, shape)
    empty = sum(1 for r in rows.values() if not r)
    log.info(f"{len(rows)} rows ({empty} empty) {'in' if args.check else '->'} {output}")
    if args.truth or arrays.path(work, arrays.TEST_TRUTH).exists():
        print_local_score(args, rows, ids, sizes, classes, shape, options)
    if args.submit:
        submit(args, output)


def main(argv=None):
    args = get_args(argv)
    cli.setup_logging(args)
    if args.scores:
        return print_scores(args.competition)
    with workdir_lock(args.workdir, "submission.py"):
        write_or_check(args)


if __name__ == "__main__":
    cli.run(main)
