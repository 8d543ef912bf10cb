"""Plumbing shared by the scripts: paths, command-line basics, safe writes, the metric."""

import argparse
import contextlib
import errno
import glob
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

COMPETITION = "ultrasound-nerve-segmentation"
log = logging.getLogger("kit")

VERBOSE = bool({"-v", "--verbose"} & set(sys.argv))


def import_tensorflow():
    """Import TensorFlow with its C++ start-up messages hidden unless -v: they are printed
    before its logging is set up, so TF_CPP_MIN_LOG_LEVEL alone does not silence them."""
    if VERBOSE:
        import tensorflow as tf
        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf
            tf.config.list_physical_devices()   # device probing logs too
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


class UserError(Exception):
    """A problem the user can fix: printed as one line, without a traceback."""


# ---------------------------------------------------------------- paths

def in_kaggle_notebook():
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))


def kaggle_input_root():
    return Path(os.environ.get("KIT_KAGGLE_INPUT", "/kaggle/input"))


def kaggle_working_root():
    return Path(os.environ.get("KIT_KAGGLE_WORKING", "/kaggle/working"))


def find_competition_input(slug=COMPETITION):
    """The folder holding train/ and test/ under /kaggle/input. Kaggle mounts a competition at
    <input>/<slug>/ or <input>/competitions/<slug>/; failing those, the shallowest folder with
    both (a competition under another slug), then a slug folder holding only zips."""
    root = kaggle_input_root()
    named = [root / slug, root / "competitions" / slug]
    found = [t.parent for pattern in ("*/train", "*/*/train", "*/*/*/train") for t in sorted(root.glob(pattern))]
    for candidate in named + found:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return next((c for c in named if c.is_dir()), None)


def default_raw():
    if in_kaggle_notebook():  # where the competition is, or where it would be once attached
        return find_competition_input() or kaggle_input_root() / COMPETITION
    return Path("raw")


def default_workdir():
    return kaggle_working_root() if in_kaggle_notebook() else Path("work")


# ---------------------------------------------------------------- command line

def parser(description):
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--raw", type=Path, default=default_raw(), help="competition files")
    p.add_argument("--workdir", type=Path, default=default_workdir(), help="arrays, models, outputs")
    p.add_argument("-v", "--verbose", action="store_true", help="framework logs and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def setup_logging(args):
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout)
    if not args.verbose:
        import warnings
        warnings.filterwarnings("ignore")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


OUT_OF_MEMORY = ("out of memory: lower --batch-size (train.py, predict.py), --image-size (train.py) "
                 "or --chunk (predict.py), or close other programs")


def explain(e):
    """One line saying what went wrong and what to do, for the failures a user can fix."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "ResourceExhaustedError":   # TensorFlow's, GPU too
        return OUT_OF_MEMORY
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        what = e.strerror or str(e).splitlines()[0]
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{where}{what}: free some disk space, or use a --workdir on another disk"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{where}{what}: use a --workdir (and --raw) you can write to, or fix its permissions"
        return f"{where}{what}: check the path, its permissions and the free disk space"
    return None


def run(main):
    """Run a script's main(): errors the user can fix become one line and exit code 2
    (a traceback only with -v); nothing half-written is left behind (see atomic_path)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        message = explain(e)
        if VERBOSE or message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def progress(iterable=None, quiet=False, **kwargs):
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=quiet, dynamic_ncols=True, **kwargs)


# ---------------------------------------------------------------- safe writes

@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):   # what a killed run was writing
        stale.unlink(missing_ok=True)
    # The temporary name keeps every suffix: Keras insists on ".weights.h5" and ".keras".
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npy(path, array):
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def load_npy(path, what, fix, mmap=False):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: {fix}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable {what} ({e}): {fix}") from None


# ---------------------------------------------------------------- images

INTERPOLATION = {"area": 3, "linear": 1, "nearest": 0}   # cv2.INTER_AREA, INTER_LINEAR, INTER_NEAREST


def resize_stack(images, size, interpolation, out=None, crop=None, place=None):
    """Resize a stack of images (N, H, W[, C]) to size (H, W), in parallel threads (OpenCV drops
    the GIL). Sets of mixed sizes are stored top-left on a common canvas with each one's size:
    crop=sizes resizes each image's own part, place=sizes resizes each to its own size on the canvas."""
    import cv2
    from concurrent.futures import ThreadPoolExecutor
    h, w = size
    if out is None:
        out = np.empty((len(images), h, w, *images.shape[3:]), images.dtype)

    def one(i):
        image = np.asarray(images[i])
        if crop is not None:
            image = image[:crop[i][0], :crop[i][1]]
        if place is None:
            out[i] = cv2.resize(image, (w, h), interpolation=INTERPOLATION[interpolation]).reshape(out[i].shape)
        else:
            ph, pw = place[i]
            out[i] = 0
            out[i, :ph, :pw] = cv2.resize(image, (int(pw), int(ph)),
                                          interpolation=INTERPOLATION[interpolation]).reshape(out[i, :ph, :pw].shape)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, range(len(images))))
    return out


# ---------------------------------------------------------------- the metric

def dice_per_image(pred, truth):
    """The competition's Dice for each image of a batch; 1 where both masks are empty."""
    pred = np.asarray(pred, bool).reshape(len(pred), -1)
    truth = np.asarray(truth, bool).reshape(len(truth), -1)
    inter = np.count_nonzero(pred & truth, axis=1)
    total = np.count_nonzero(pred, axis=1) + np.count_nonzero(truth, axis=1)
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


def mean_dice(pred, truth):
    return float(dice_per_image(pred, truth).mean()) if len(pred) else float("nan")


def iou_per_image(pred, truth):
    """Intersection over union of each image of a batch; 1 where both masks are empty."""
    pred = np.asarray(pred, bool).reshape(len(pred), -1)
    truth = np.asarray(truth, bool).reshape(len(truth), -1)
    inter = np.count_nonzero(pred & truth, axis=1)
    union = np.count_nonzero(pred | truth, axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def class_scores(pred, truth, classes):
    """{class: (mean Dice, mean IoU)} over images for classes 1..classes of label masks."""
    return {c: (float(dice_per_image(pred == c, truth == c).mean()), float(iou_per_image(pred == c, truth == c).mean()))
            for c in range(1, classes + 1)}


def format_class_scores(scores):
    lines = [f"  class {c}: Dice {d:.4f}  IoU {j:.4f}" for c, (d, j) in scores.items()]
    dice, iou = np.mean([d for d, _ in scores.values()]), np.mean([j for _, j in scores.values()])
    return "\n".join(lines + [f"  mean:    Dice {dice:.4f}  IoU {iou:.4f}"])


# ---------------------------------------------------------------- what data.py found out

def load_sizes(work, split, n):
    """Each image's own (H, W) when a set mixes sizes (data.py wrote imgs_size_<split>.npy), else None."""
    path = Path(work) / f"imgs_size_{split}.npy"
    if not path.exists():
        return None
    sizes = load_npy(path, "size array", "run `python data.py` again")
    if sizes.shape != (n, 2):
        raise UserError(f"{path} holds {sizes.shape} sizes for {n} images: run `python data.py` again")
    return sizes


def load_classes(work):
    """Foreground classes of the masks: 1 for binary masks, K for labels 0..K (data.py --classes)."""
    import json
    path = Path(work) / "data.json"
    return int(json.loads(path.read_text())["classes"]) if path.exists() else 1
