"""Look at images, their masks and the model's predictions side by side.

    python visualize.py -n 0                  # validation frame 0: image, truth, prediction, overlay
    python visualize.py -n 0 --set test       # test image 0 (truth from --truth, when there is one)
    python visualize.py -i raw/train/1_1.tif  # any image file; a <name>_mask file beside it is its truth
    python visualize.py --worst 8 --grid      # the 8 validation frames with the lowest Dice, on one sheet

Writes PNGs into --output (default --workdir/visualize/) and shows them when a display exists.
Validation frames (--set val, and the frames of --set train that were validated) are predicted by
the model of their own fold, which never saw them; other frames by all the models, as predict.py does.
"""

import os
import re
import sys
from pathlib import Path

import common

tf = common.import_tensorflow()  # before Keras: hides TensorFlow's start-up noise
import numpy as np

import predict
from common import UserError, log

TRUTH, PREDICTION = "lime", "red"
LEGEND = ("green outline: truth, red outline: prediction; "
          "prediction panel: the model's probability, with the final mask outlined")


def get_args(argv=None):
    p = common.parser(__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("-n", "--index", type=int, nargs="+", default=[0], help="frame(s) of --set, from 0")
    which.add_argument("-i", "--image", type=Path, nargs="+", help="image file(s) instead of a set")
    which.add_argument("--worst", type=int, metavar="K", help="the K validation frames with the lowest Dice")
    p.add_argument("--set", choices=["val", "train", "test"], default="val", help="which frames -n counts")
    p.add_argument("--grid", action="store_true", help="all the frames on one sheet, one row each")
    p.add_argument("--truth", type=Path,
                   help="folder of the test set's <id>_mask.tif; none: <raw>/test_masks, if it exists")
    p.add_argument("--output", type=Path, help="folder for the PNGs; none: <workdir>/visualize")
    p.add_argument("--no-show", dest="show", action="store_false", help="only write the PNGs")
    return p.parse_args(argv)


def has_display():
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# ---------------------------------------------------------------- which model saw what

def fold_models(models, config):
    """{fold: model} of the saved models, from their names in config.json."""
    return {int(re.fullmatch(r"fold(\d+)\.keras", name).group(1)): m for name, m in zip(config["folds"], models)}


def validation_table(model_dir):
    """One row per validation frame: index into imgs_train.npy, subject, fold, truth_area, dice."""
    import pandas as pd
    path = model_dir / "validation.csv"
    if not path.exists():
        raise UserError(f"{path} not found: run `python train.py` (again) to record the validation frames")
    return pd.read_csv(path)


def make_case(image, truth, label, models, config):
    """One image with its truth (or None), and the probability (at the image's size) and final
    mask that predict.py would make of it with these models."""
    image = np.asarray(image)
    size = image.shape[:2]
    if config.get("tile"):   # trained on patches: predicted by tiles, as predict.py does
        tiled, overlap = predict.tile_models(models, config["tile"], 0)
        probs = predict.tiled_probabilities(tiled, image, config["tile"], overlap, 8, config["tta"])[None]
    else:
        probs = predict.probabilities(models, image[None], 1, config["tta"])
    mask = predict.final_masks(probs, size, config["threshold"], config["min_area"])[0]
    foreground = 1 - probs[..., 0] if probs.ndim == 4 else probs   # label masks: any class but background
    return dict(image=image, truth=None if truth is None else np.asarray(truth), label=label,
                prob=common.resize_stack(foreground, size, "linear")[0], mask=mask)


def training_cases(work, positions, models, config, validation_only):
    """Frames of imgs_train.npy: `positions` count the validation frames (validation_only) or all.
    A validated frame is predicted by its own fold's model, any other by all the models."""
    fix = "run `python data.py` first"
    images = common.load_npy(work / "imgs_train.npy", "image array", fix, mmap=True)
    masks = common.load_npy(work / "imgs_mask_train.npy", "mask array", fix, mmap=True)
    subjects = common.load_npy(work / "imgs_subject_train.npy", "subject array", fix)
    table = validation_table(work / "model")
    if table["index"].max() >= len(images):
        raise UserError(f"{work}/model/validation.csv does not match {work}/imgs_train.npy: "
                        f"run `python train.py` again on these arrays")
    frames = table["index"].to_numpy() if validation_only else np.arange(len(images))
    check_positions(positions, len(frames), "val" if validation_only else "train")
    fold_of = dict(zip(table["index"].tolist(), table["fold"].tolist()))
    by_fold = fold_models(models, config)
    cases = []
    for p in positions:
        i = int(frames[p])
        fold = fold_of.get(i)
        label = (f"{'val' if validation_only else 'train'} #{p}: frame {i}, subject {subjects[i]}, "
                 + (f"fold {fold}" if fold in by_fold else "seen in training"))
        cases.append(make_case(images[i], masks[i], label, [by_fold[fold]] if fold in by_fold else models, config))
    return cases


def test_cases(work, raw, truth_dir, positions, models, config):
    fix = "run `python data.py` first"
    images = common.load_npy(work / "imgs_test.npy", "test image array", fix, mmap=True)
    ids = common.load_npy(work / "imgs_id_test.npy", "test id array", fix)
    check_positions(positions, len(images), "test")
    truth_dir = truth_dir or (raw / "test_masks" if (raw / "test_masks").is_dir() else None)
    return [make_case(images[p], read_truth(truth_dir / f"{ids[p]}_mask.tif") if truth_dir else None,
                      f"test #{p}: id {ids[p]}", models, config) for p in positions]


def file_cases(paths, models, config):
    import data
    cases = []
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path} not found: give the path of an image file")
        image = data.read_image(path)
        truth = read_truth(path.with_name(f"{path.stem}_mask{path.suffix}"))
        if truth is not None and truth.shape != image.shape:
            raise UserError(f"{path} and its mask differ in size: fix or remove the mask")
        cases.append(make_case(image, truth, path.name, models, config))
    return cases


def read_truth(path):
    import data
    return data.read_image(path, is_mask=True) if path.is_file() else None


def check_positions(positions, n, name):
    bad = [p for p in positions if not 0 <= p < n]
    if bad:
        raise UserError(f"-n {bad[0]} is out of range: --set {name} has {n} frames (0 to {n - 1})")


def worst_positions(work, k):
    """Positions in validation.csv of its k lowest-Dice frames, worst first."""
    table = validation_table(work / "model")
    return [int(p) for p in np.argsort(table["dice"].to_numpy(), kind="stable")[:k]]


# ---------------------------------------------------------------- drawing

def draw_cases(cases, figure=None, panel=2.6, dpi=80):
    """One row per case: the image, the truth, the prediction, and both outlines on the image."""
    if figure is None:
        from matplotlib.figure import Figure as figure
    h, w = cases[0]["image"].shape[:2]
    fig = figure(figsize=(4 * panel, len(cases) * (panel * h / w + 0.35) + 0.5), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(cases), 4, squeeze=False)
    for row, case in zip(axes, cases):
        image, truth, prob, mask = case["image"], case["truth"], case["prob"], case["mask"]
        row[0].imshow(image, cmap="gray", vmin=0, vmax=255)
        row[0].set_title(case["label"], fontsize=8, loc="left")
        if truth is None:
            row[1].imshow(np.zeros(image.shape[:2]), cmap="gray", vmin=0, vmax=1)
            row[1].text(0.5, 0.5, "no ground truth", color="white", ha="center", va="center",
                        transform=row[1].transAxes)
            row[1].set_title("truth: none", fontsize=8)
        else:
            row[1].imshow(truth, cmap="gray", vmin=0, vmax=max(1, int(truth.max())))   # labels 0..K
            row[1].set_title(f"truth: {np.count_nonzero(truth)} px", fontsize=8)
        row[2].imshow(prob, cmap="viridis", vmin=0, vmax=1)
        outline(row[2], mask, PREDICTION)
        row[2].set_title(f"prediction: {np.count_nonzero(mask)} px", fontsize=8)
        row[3].imshow(image, cmap="gray", vmin=0, vmax=255)
        if truth is not None:
            outline(row[3], truth, TRUTH)
        outline(row[3], mask, PREDICTION)
        dice = "" if truth is None else f"Dice {common.dice_per_image(mask[None], truth[None])[0]:.3f}"
        row[3].set_title(f"overlay  {dice}", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    fig.suptitle(LEGEND, fontsize=8)
    return fig


def outline(ax, mask, color):
    if mask.any():
        ax.contour(mask, levels=[0.5], colors=color, linewidths=1)


def save_figure(fig, path):
    with common.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ---------------------------------------------------------------- main

def main(argv=None):
    args = get_args(argv)
    common.setup_logging(args)
    work = args.workdir
    show = args.show and has_display()
    output = args.output or work / "visualize"
    models, config = predict.load_models(work / "model")
    if args.worst is not None and args.set != "val":
        raise UserError("--worst picks validation frames: leave out --set, or use --set val")

    if args.image:
        cases, names = file_cases(args.image, models, config), [p.stem for p in args.image]
    elif args.worst is not None:
        if args.worst < 1:
            raise UserError(f"--worst {args.worst}: give a number of frames, 1 or more")
        positions = worst_positions(work, args.worst)
        cases = training_cases(work, positions, models, config, validation_only=True)
        names = [f"val_worst{rank + 1}_{p}" for rank, p in enumerate(positions)]
    elif args.set == "test":
        cases = test_cases(work, args.raw, args.truth, args.index, models, config)
        names = [f"test_{p}" for p in args.index]
    else:
        cases = training_cases(work, args.index, models, config, validation_only=args.set == "val")
        names = [f"{args.set}_{p}" for p in args.index]

    figure = None
    if show:
        import matplotlib.pyplot as plt
        figure = plt.figure
    if args.grid:
        name = f"val_worst{len(cases)}" if args.worst is not None else f"{'images' if args.image else args.set}_grid"
        sheets = [(draw_cases(cases, figure=figure), output / f"{name}.png")]
    else:
        sheets = [(draw_cases([case], figure=figure, dpi=100), output / f"{name}.png")
                  for case, name in zip(cases, names)]
    for fig, path in sheets:
        log.info(f"-> {save_figure(fig, path)}")
    if show:
        plt.show()


if __name__ == "__main__":
    common.run(main)
