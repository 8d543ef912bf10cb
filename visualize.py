"""Look at images, their masks and the model's predictions side by side.

    python visualize.py -n 0                  # validation frame 0: image, truth, prediction
    python visualize.py -n 0 --set test       # test image 0 (truth from --truth, when there is one)
    python visualize.py -i raw/train/1_1.tif  # any image; <name>_mask beside it: its truth
    python visualize.py --worst 8 --grid      # the 8 lowest-Dice validation frames, one sheet

Writes PNGs into --output (default --workdir/visualize/) and shows them when a display exists.
Validation frames (--set val, and the frames of --set train that were validated) are predicted by
the model of their own fold, which never saw them; other frames by all the models, as predict.py
does.
"""

import logging
import os
import sys
from pathlib import Path

from kit import cli, figures
from kit.files import UserError, workdir_lock

log = logging.getLogger(__name__)


def get_args(argv=None):
    p = cli.parser(__doc__)
    which = p.add_mutually_exclusive_group()
    which.add_argument("-n", "--index", type=int, nargs="+", default=[0],
                       help="frame(s) of --set, from 0")
    which.add_argument("-i", "--image", type=Path, nargs="+", help="image file(s) instead of a set")
    which.add_argument("--worst", type=int, metavar="K",
                       help="the K validation frames with the lowest Dice")
    p.add_argument("--set", choices=["val", "train", "test"], default="val",
                   help="which frames -n counts")
    p.add_argument("--grid", action="store_true", help="all the frames on one sheet, one row each")
    p.add_argument(
        "--truth", type=Path,
        help="folder of the test set's <id>_mask.tif; none: <raw>/test_masks, if it exists")
    p.add_argument("--output", type=Path, help="folder for the PNGs; none: <workdir>/visualize")
    p.add_argument("--no-show", dest="show", action="store_false", help="only write the PNGs")
    return p.parse_args(argv)


def has_display():
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def chosen_cases(args, models, config):
    """The frames the flags name, and a file name for each."""
    from kit import cases  # TensorFlow, once -v is known

    work = args.workdir
    if args.image:
        return cases.file_cases(args.image, models, config), [p.stem for p in args.image]
    if args.worst is not None:
        if args.worst < 1:
            raise UserError(f"--worst {args.worst}: give a number of frames, 1 or more")
        positions = cases.worst_positions(work, args.worst)
        shown = cases.training_cases(work, positions, models, config, validation_only=True)
        return shown, [f"val_worst{rank + 1}_{p}" for rank, p in enumerate(positions)]
    if args.set == "test":
        shown = cases.test_cases(work, args.raw, args.truth, args.index, models, config)
        return shown, [f"test_{p}" for p in args.index]
    shown = cases.training_cases(work, args.index, models, config, args.set == "val")
    return shown, [f"{args.set}_{p}" for p in args.index]


def sheets(args, shown, names, output, figure):
    """The figures to write, each with its path: one per frame, or with --grid one sheet."""
    if args.grid:
        name = (f"val_worst{len(shown)}"
                if args.worst is not None else f"{'images' if args.image else args.set}_grid")
        return [(figures.draw_cases(shown, figure=figure), output / f"{name}.png")]
    return [(figures.draw_cases([case], figure=figure, dpi=100), output / f"{name}.png")
            for case, name in zip(shown, names)]


def main(argv=None):
    args = get_args(argv)
    cli.setup_logging(args)
    work = args.workdir
    show = args.show and has_display()
    output = args.output or work / "visualize"
    if args.worst is not None and args.set != "val":
        raise UserError("--worst picks validation frames: leave out --set, or use --set val")
    figure = None
    if show:
        import matplotlib.pyplot as plt

        figure = plt.figure
    with workdir_lock(work, "visualize.py"):  # released before the window: it may stay open
        from kit.inference import load_models  # TensorFlow, once -v is known

        models, config = load_models(work / "model")
        shown, names = chosen_cases(args, models, config)
        for fig, path in sheets(args, shown, names, output, figure):
            log.info(f"-> {figures.save(fig, path)}")
    if show:
        plt.show()


if __name__ == "__main__":
    cli.run(main)
