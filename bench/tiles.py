"""Memory benchmark: predict.py --tile on a synthetic image far larger than the working size.

    python bench/tiles.py                          # one 6000x4000 test image
    python bench/tiles.py --size 12000 8000 --tile 512 --overlap 64

Writes a small synthetic set of bright discs on a speckled background (training images of
--train-size, one test image of --size with its mask) into --workdir, runs data.py,
train.py --patch and predict.py --tile as a user would, and prints predict.py's peak memory
(resident set size), its time, the Dice of the big mask, and the Dice within a few pixels of
the tile seams against the Dice elsewhere: seams that showed would score worse there.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the kit's library, kit/
from kit import metrics  # noqa: E402


def get_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench_tiles",
                   help="files and runs go here")
    p.add_argument("--size", type=int, nargs=2, default=[6000, 4000], metavar=("W", "H"),
                   help="test image size")
    p.add_argument("--train-size", type=int, default=512, help="side of the training images")
    p.add_argument("--tile", type=int, default=512, help="predict.py --tile")
    p.add_argument("--overlap", type=int, default=64, help="predict.py --overlap")
    p.add_argument("--patch", type=int, default=128, help="train.py --patch")
    p.add_argument("--epochs", type=int, default=6, help="train.py --epochs")
    return p.parse_args()


def synthetic(h, w, rng):
    """Bright discs of 8-30 pixels radius on a speckled, slowly varying background."""
    image = cv2.GaussianBlur(
        rng.normal(90, 25, (h // 8 + 1, w // 8 + 1)).astype(np.float32), (0, 0), 3)
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(max(1, h * w // 12000)):
        cv2.circle(mask, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(8, 30)),
                   255, -1)
    image = image + 70 * (mask > 0) + rng.normal(0, 18, (h, w)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_set(root, args):
    rng = np.random.default_rng(0)
    for folder in ("train/images", "train/masks", "test/images", "test/masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(12):
        image, mask = synthetic(args.train_size, args.train_size, rng)
        cv2.imwrite(str(root / "train/images" / f"{i}.png"), image)
        cv2.imwrite(str(root / "train/masks" / f"{i}.png"), mask)
    image, mask = synthetic(args.size[1], args.size[0], rng)
    cv2.imwrite(str(root / "test/images" / "big.png"), image)
    cv2.imwrite(str(root / "test/masks" / "big.png"), mask)


def run(*command):
    """Run a script; return its peak resident memory in bytes and its wall time."""
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / command[0]), *map(str, command[1:])], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{output.decode()[-3000:]}")
    return usage.ru_maxrss * 1024, time.time() - started


def seam_band(shape, tile, overlap, width=4):
    """Pixels within `width` of where one tile's blending ramp meets the next one's."""
    band = np.zeros(shape, bool)
    stride = tile - overlap
    for axis, length in enumerate(shape):
        # tile k covers [k*stride - overlap, k*stride - overlap + tile) in image coordinates
        for k in range(1, length // stride + 2):
            centre = k * stride - overlap + overlap // 2
            lo, hi = (max(0,
                          centre - overlap // 2 - width), min(length,
                                                              centre + overlap // 2 + width))
            if axis == 0:
                band[lo:hi] = True
            else:
                band[:, lo:hi] = True
    return band


def main():
    args = get_args()
    root, work = args.workdir / "data", args.workdir / "work"
    if not (root / "test/images/big.png").exists():
        write_set(root, args)
    run("data.py", "--images", root / "train/images", "--masks", root / "train/masks",
        "--test-images", root / "test/images", "--test-masks", root / "test/masks", "--workdir",
        work, "-q")
    run("train.py", "--workdir", work, "--patch", args.patch, "--epochs", args.epochs, "--folds", 4,
        "-q")
    peak, seconds = run("predict.py", "--workdir", work, "--tile", args.tile, "--overlap",
                        args.overlap, "-q")
    pred = np.load(work / "imgs_mask_test.npy")[0]
    truth = np.load(work / "imgs_truth_test.npy")[0]
    band = seam_band(pred.shape, args.tile, args.overlap)
    dice = metrics.dice_per_image(pred[None], truth[None])[0]
    near = metrics.dice_per_image(pred[band][None], truth[band][None])[0]
    away = metrics.dice_per_image(pred[~band][None], truth[~band][None])[0]
    print(f"{args.size[0]}x{args.size[1]} image, tiles {args.tile} overlap {args.overlap}: "
          f"predict.py peak memory {peak / 2**30:.2f} GiB, {seconds:.0f} s")
    print(f"Dice {dice:.4f}: near tile seams {near:.4f}, away from them {away:.4f} "
          f"({band.mean():.0%} of the pixels lie near a seam)")


if __name__ == "__main__":
    main()
