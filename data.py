"""Turn the competition's TIFF files (or any folder of images and masks) into NumPy arrays.

    python data.py              # raw/train, raw/test (or the zips in raw/) -> work/*.npy
    python data.py --download   # fetch the competition from Kaggle first
    python data.py --demo       # write a small synthetic competition into --raw first
    python data.py --images DIR --masks DIR --test-images DIR   # any folder of images and masks

Writes the arrays listed in kit/arrays.py into --workdir. Images may be PNG, TIFF, JPEG, BMP
or GIF, grayscale or colour (--channels 3 keeps RGB). Sets of mixed sizes are stored top-left
on a canvas as large as the largest image, with each image's own size beside them, and come
back at that size from predict.py. Masks are binary (0/255 or 0/1) or, with --classes K,
labels 0..K; palette PNGs are read as their indices, instance masks are merged.
Also writes contradictions.csv: frames of one subject that show the same view but whose masks
disagree (kit/duplicates.py); --drop-contradictions drops the empty-masked one of each pair.
"""

import logging
import os
from pathlib import Path

from kit import arrays, cli, demo, duplicates, layouts
from kit.files import COMPETITION, UserError, has_train_test, in_kaggle_notebook
from kit.files import kaggle_input_root, output_set, unpack_zips, workdir_lock

log = logging.getLogger(__name__)


def add_layout_flags(p):
    g = p.add_argument_group("other layouts (instead of the competition's raw/train and raw/test)")
    g.add_argument("--images", type=Path, metavar="DIR",
                   help="folder of training images, paired with --masks by name")
    g.add_argument("--masks", type=Path, metavar="DIR", help="folder of training masks")
    g.add_argument("--mask-suffix", default="",
                   help="a mask's name is its image's name plus this (e.g. _mask)")
    g.add_argument("--dsb", type=Path, metavar="DIR",
                   help="folder of <id>/images/<id>.png with <id>/masks/*.png (instance masks)")
    g.add_argument("--test-images", type=Path, metavar="DIR",
                   help="folder of test images (or of DSB-style <id>/ folders)")
    g.add_argument("--test-masks", type=Path, metavar="DIR",
                   help="their masks, kept as imgs_truth_test.npy for scoring")
    g.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="the last N training images (by name) become the test set, masks kept")
    g.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1: grayscale, 3: RGB")
    g.add_argument("--classes", type=int, default=1, metavar="K",
                   help="foreground classes: 1 for binary masks, K for label masks 0..K")
    g.add_argument("--label-map", nargs="+", default=[], metavar="FROM:TO",
                   help="mask values to remap before checking them, e.g. 0:1 255:0")


def get_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--download", action="store_true",
                   help="download the competition from Kaggle into --raw")
    p.add_argument("--competition", default=COMPETITION, help="Kaggle competition slug")
    p.add_argument("--demo", action="store_true",
                   help="write a synthetic demo competition into --raw")
    p.add_argument("--demo-size", type=int, nargs=2, default=[420, 580], metavar=("H", "W"),
                   help="image size of the demo data")
    p.add_argument("--demo-subjects", type=int, default=8, help="subjects in the demo training set")
    p.add_argument("--skip-unpaired", action="store_true",
                   help="skip training images without a mask (and masks without an image)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="decoding threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo data")
    p.add_argument("--drop-contradictions", action="store_true",
                   help="drop the empty-masked frame of each pair in contradictions.csv")
    p.add_argument("--similarity", type=float, default=duplicates.SIMILAR,
                   help="thumbnail correlation from which a subject's two frames are one view")
    add_layout_flags(p)
    return p.parse_args(argv)


def competition_folder(args):
    """The folder holding the competition's train/ and test/: made, downloaded or unzipped."""
    raw = args.raw
    if args.demo:
        demo.make_demo(raw, *args.demo_size, args.demo_subjects, args.seed, args.quiet)
    if args.download and in_kaggle_notebook():
        # Competition notebooks run offline; Kaggle mounts the data under /kaggle/input instead.
        log.info(f"in a Kaggle notebook: not downloading, the competition files are read from "
                 f"{kaggle_input_root()}")
    elif args.download and not has_train_test(raw):
        from kit import kaggle_api

        kaggle_api.download(args.competition, raw, quiet=args.quiet)
    if not raw.is_dir() and in_kaggle_notebook():
        raise UserError(f"no competition files in {kaggle_input_root()} ({raw} not found): add the "
                        f"competition's data to the notebook (Add Input > Competitions > "
                        f"{args.competition})")
    if not raw.is_dir():
        raise UserError(f"{raw} not found: create it and put the competition files there, "
                        f"or run `python data.py --download` or `--demo`")
    return unpack_zips(raw, args.workdir)


def main(argv=None):
    args = get_args(argv)
    cli.setup_logging(args)
    if not 1 <= args.classes <= 254:
        raise UserError(f"--classes {args.classes}: give 1 to 254 foreground classes")
    if not 0 < args.similarity <= 1:
        raise UserError(f"--similarity {args.similarity}: give a correlation above 0, at most 1")
    folders = bool(args.images or args.dsb)
    if not folders and (args.channels != 1 or args.classes != 1):
        raise UserError("the competition's frames are grayscale with binary masks: --channels and "
                        "--classes are for --images/--dsb folders")
    with workdir_lock(args.workdir, "data.py"):
        sets = (layouts.folders(args)
                if folders else layouts.competition(competition_folder(args), args.skip_unpaired))
        with output_set(args.workdir, "data.py") as out:  # the arrays appear together, or none
            arrays.write_sets(sets, out, args, one_size=not folders)
            # Read back from the arrays just written: the one place every layout's frames meet.
            duplicates.check(out, [stem for stem, _, _ in sets.train], args.drop_contradictions,
                             args.similarity)


if __name__ == "__main__":
    cli.run(main)
