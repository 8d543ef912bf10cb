"""Quality benchmark: the kit's defaults against the 2017 tutorial, same time budget, real data.

    python bench/quality.py                   # 10-minute training budget per run
    python bench/quality.py --budget 120      # quicker look
    python bench/quality.py --recipes baseline "kit defaults" --baseline ../kit-at-an-older-commit

For each data set in --data (see its README.md) it writes the competition's arrays into
work/bench_quality/<set>/<recipe>/, runs train.py and predict.py as a user would, and
scores the final masks of held-out images with the competition's metric:
  nerve-kaggle-sample  train on subject 1, score on subject 2
  usgra-nerve          train on images/, score on test/ (binary task: nerve = label 1)
  isbi2012             train on slices 0-23, score on 24-29 (membranes: label value 0)
It prints the working size train.py chose, the epochs it trained and its wall time.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the kit's library, kit/
from kit import duplicates, files, metrics  # noqa: E402

RECIPES = {"tutorial": ["--preset", "tutorial"], "kit defaults": [], "baseline": []}


def get_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder of the real data sets")
    p.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench_quality",
                   help="runs go here")
    p.add_argument("--budget", type=float, default=600, help="training seconds per run")
    p.add_argument("--sets", nargs="+", default=list(LOADERS), choices=list(LOADERS),
                   help="data sets")
    p.add_argument("--recipes", nargs="+", default=["tutorial", "kit defaults"],
                   choices=list(RECIPES), help="recipes")
    p.add_argument(
        "--baseline", type=Path, metavar="DIR",
        help="another checkout of the kit (e.g. a worktree of an earlier commit): "
        "the 'baseline' recipe runs its defaults")
    p.add_argument(
        "--drop-contradictions", action="store_true",
        help="the kit's runs train without the empty-masked member of each "
        "contradicting near-duplicate pair (data.py --drop-contradictions)")
    p.add_argument(
        "--time-to-tutorial", nargs="+", type=float, metavar="SECONDS",
        help="instead of the table: train the kit at each of these budgets in turn until its "
        "held-out Dice reaches the tutorial's at --budget, and print when it did")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="flags added to the kit's train.py (kit defaults and baseline)")
    return p.parse_args()


# ---------------------------------------------------------------- data sets as competition arrays


def read_gray(path):
    return np.asarray(Image.open(path).convert("L"))


def nerve_kaggle_sample(root):
    """Subject 1 trains, subject 2 is held out (frames of one subject never cross)."""

    def subject(s):
        masks = sorted(root.glob(f"train/{s}_*_mask.tif"), key=lambda p: int(p.stem.split("_")[1]))
        pairs = [(m.with_name(m.name.replace("_mask", "")), m) for m in masks]
        pairs = [(i, m) for i, m in pairs if i.exists()]
        return (np.stack([read_gray(i) for i, _ in pairs]),
                np.stack([(read_gray(m) > 0).astype(np.uint8) for _, m in pairs]))

    (x, y), (tx, ty) = subject(1), subject(2)
    # One subject only: train.py splits its consecutive frames into blocks for validation.
    return x, y, np.ones(len(x), np.int32), tx, ty


def usgra_nerve(root):
    """images/ train, test/ scores; mixed sizes are brought to the most common one (512x534)."""

    def load(images, masks):
        pairs = [(p, masks / p.name) for p in sorted(images.glob("*.png"))]
        x = [cv2.resize(read_gray(i), (534, 512), interpolation=cv2.INTER_AREA) for i, _ in pairs]
        y = [
            cv2.resize((np.asarray(Image.open(m)) == 1).astype(np.uint8), (534, 512),
                       interpolation=cv2.INTER_NEAREST) for _, m in pairs
        ]
        return np.stack(x), np.stack(y)

    x, y = load(root / "images", root / "masks")
    tx, ty = load(root / "test" / "images", root / "test" / "masks")
    return x, y, np.arange(len(x), dtype=np.int32), tx, ty


def isbi2012(root):
    """Slices 0-23 train, 24-29 score; membranes (label value 0) are the foreground."""

    def load(k):
        return read_gray(root / "image" / f"{k}.png"), (read_gray(root / "label" / f"{k}.png") == 0)

    pairs = [load(k) for k in range(30)]
    x, y = (np.stack(a) for a in zip(*pairs))
    y = y.astype(np.uint8)
    return x[:24], y[:24], np.arange(24, dtype=np.int32), x[24:], y[24:]


LOADERS = {
    "nerve-kaggle-sample": nerve_kaggle_sample,
    "usgra-nerve": usgra_nerve,
    "isbi2012": isbi2012
}


def write_arrays(work, x, y, subjects, tx):
    ids = np.arange(1, len(tx) + 1, dtype=np.int32)
    work.mkdir(parents=True, exist_ok=True)
    for name, array in [("imgs_train", x), ("imgs_mask_train", y), ("imgs_subject_train", subjects),
                        ("imgs_test", tx), ("imgs_id_test", ids)]:
        files.save_npy(work / f"{name}.npy", array)


# ---------------------------------------------------------------- runs


def run(root, script, work, *flags):
    command = [sys.executable, str(root / script), "--workdir", str(work), "-q", *flags]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def what_was_trained(work):
    """The working size, the epochs and the seconds spent training (every fold), and the
    out-of-fold Dice (tuned), from what train.py left."""
    config = json.loads((work / "model" / "config.json").read_text())
    # The plan's size; a kit from before the plan (a --baseline) kept it among its settings.
    h, w = config["plan"]["size"] if "size" in config.get("plan", {}) else config["settings"][
        "input_size"]
    history = [pd.read_csv(p) for p in (work / "model").glob("history_fold*.csv")]
    if config.get("seconds"):
        seconds = sum(config["seconds"]["training"])
    else:  # a kit from before config.json kept them: the epochs' own seconds, where logged
        seconds = sum(h["seconds"].sum() if "seconds" in h else float("nan") for h in history)
    return f"{w}x{h}", sum(map(len,
                               history)), seconds, config.get("validation_dice") or float("nan")


def bench(name, recipe, data, args, budget=None):
    x, y, subjects, tx, ty = data
    budget = budget or args.budget
    work = args.workdir / name / f"{recipe.replace(' ', '_')}_{budget:g}s"
    shutil.rmtree(work, ignore_errors=True)
    write_arrays(work, x, y, subjects, tx)
    if args.drop_contradictions and recipe != "tutorial":
        with files.output_set(work, "bench") as out:
            dropped = duplicates.check(out, [str(i) for i in range(len(x))], drop=True)
        print(f"  (--drop-contradictions: {len(dropped)} of {len(x)} training frames dropped)")
    root = args.baseline if recipe == "baseline" else ROOT
    flags = RECIPES[recipe] + (args.extra if recipe != "tutorial" else [])
    started = time.time()
    run(root, "train.py", work, "--time-limit", str(budget), *flags)
    trained = time.time() - started
    run(root, "predict.py", work)
    masks = np.load(work / "imgs_mask_test.npy")
    return (metrics.mean_dice(masks, ty), trained, time.time() - started, *what_was_trained(work))


def time_to_tutorial(name, data, args):
    """The figure a user feels: how soon the kit's held-out Dice reaches the tutorial's final."""
    goal, trained = bench(name, "tutorial", data, args)[:2]
    print(
        f"  tutorial: mean Dice {goal:.3f} after {trained:.0f} s of train.py (--budget "
        f"{args.budget:g})", flush=True)
    for budget in sorted(args.time_to_tutorial):
        dice, trained = bench(name, "kit defaults", data, args, budget)[:2]
        print(
            f"  kit, --time-limit {budget:g}: mean Dice {dice:.3f} after {trained:.0f} s of "
            f"train.py{' (reached)' if dice >= goal else ''}", flush=True)
        if dice >= goal:
            return


def main():
    args = get_args()
    rows = []
    for name in args.sets:
        root = args.data / name
        if not root.is_dir():
            print(f"skipping {name}: {root} not found")
            continue
        data = LOADERS[name](root)
        empty = (data[4].reshape(len(data[4]), -1).max(1) == 0).mean()
        print(f"{name}: {len(data[0])} training, {len(data[3])} held-out images "
              f"{data[0].shape[2]}x{data[0].shape[1]} ({empty:.0%} of held-out frames empty)")
        if args.time_to_tutorial:
            time_to_tutorial(name, data, args)
            continue
        for recipe in args.recipes:
            dice, trained, total, size, epochs, epoch_s, oof = bench(name, recipe, data, args)
            rows.append((name, recipe, dice, oof, size, epochs, epoch_s, trained, total))
            print(
                f"  {recipe:<13} mean Dice {dice:.3f} (out of fold {oof:.3f})  size {size}, "
                f"{epochs} epochs, {epoch_s:.0f} s training  train.py {trained:4.0f} s  "
                f"total {total:4.0f} s", flush=True)
    print("\n| data set | recipe | mean Dice (held out) | out-of-fold Dice | working size | epochs "
          "| s training | train.py s | train + predict s |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for name, recipe, dice, oof, size, epochs, epoch_s, trained, total in rows:
        print(f"| {name} | {recipe} | {dice:.3f} | {oof:.3f} | {size} | {epochs} | {epoch_s:.0f} "
              f"| {trained:.0f} | {total:.0f} |")


if __name__ == "__main__":
    main()
