"""The arrays data.py writes into --workdir and the later steps read: their names, how they
are written together, and how they are read back and checked.

    imgs_train.npy          (N, H, W[, 3]) uint8    training images
    imgs_mask_train.npy     (N, H, W) uint8         their masks: 0/1, or labels 0..K
    imgs_subject_train.npy  (N,)                    subject of each frame (folds never split one)
    imgs_test.npy           (M, H, W[, 3]) uint8    test images
    imgs_id_test.npy        (M,)                    their ids, sorted
    imgs_size_<split>.npy   (N, 2)                  each image's own (H, W), where sizes differ
    imgs_truth_test.npy     (M, H, W) uint8         test masks, where given (scored locally)
    imgs_mask_test.npy      (M, H, W) uint8         the final test masks (predict.py)
    imgs_mask_test.json     {"test": fingerprint}   the test arrays they were predicted from
    data.json               {"classes": K}          foreground classes of the masks

data.py writes its arrays as one set, predict.py its masks with their record (files.OutputSet):
a kill leaves the old set or the whole new one.
"""

import json
import logging
import zlib
from pathlib import Path

import numpy as np

from kit import images
from kit.files import OutputSet, UserError, check_free_space, load_npy, new_array

log = logging.getLogger(__name__)

TRAIN_IMAGES, TRAIN_MASKS, SUBJECTS = "imgs_train", "imgs_mask_train", "imgs_subject_train"
TEST_IMAGES, TEST_IDS, TEST_TRUTH = "imgs_test", "imgs_id_test", "imgs_truth_test"
TEST_MASKS = "imgs_mask_test"
ALWAYS = (TRAIN_IMAGES, TRAIN_MASKS, SUBJECTS, TEST_IMAGES, TEST_IDS)
MASKS_RECORD = "imgs_mask_test.json"
RERUN = "run `python data.py` again"
FIRST = "run `python data.py` first"


def size_name(split):
    return f"imgs_size_{split}"


def workdir(work):
    """The folder of `work`: a workdir, or a set of outputs being written into one."""
    return work.work if isinstance(work, OutputSet) else Path(work)


def located(work, filename):
    """<work>/<filename>; while a step writes a new set into the workdir (work: its
    files.OutputSet), where that set's file lies now: staged, the one already there, or None
    where the new set has none."""
    if isinstance(work, OutputSet):
        return work.path(work.work / filename)
    return Path(work) / filename


def path(work, name):
    return located(work, f"{name}.npy")


def present(work, name):
    return path(work, name) is not None and path(work, name).exists()


def fingerprint(*arrays, samples=64):
    """What identifies a set of arrays, one frame each along the first axis (images and masks,
    test images and ids), without reading them whole: the frames' count and shape, and a CRC of
    up to `samples` frames spread over the set, and of 1-D arrays (ids, subjects: small) whole.
    Contents only: the same arrays written again, or copied, have the same fingerprint."""
    n = len(arrays[0])
    crc = 0
    for i in range(0, n, max(1, n // samples)):
        for a in arrays:
            if a.ndim > 1:
                crc = zlib.crc32(np.ascontiguousarray(a[i]), crc)
    for a in arrays:
        if a.ndim == 1:
            crc = zlib.crc32(np.ascontiguousarray(a), crc)
    return {"frames": n, "shape": list(arrays[0].shape[1:]), "checksum": crc}


def training_fingerprint(images, masks, classes):
    """The training arrays' fingerprint, as --resume and the model's config.json record it."""
    return {**fingerprint(images, masks), "classes": classes}


def stage_arrays(out, names, classes):
    """Staged files {name: path} in `out` (files.OutputSet) for a data.py run's arrays, with
    data.json beside them; the optional arrays of an earlier run that this one lacks go."""
    names = list(ALWAYS) + [n for n in names if n not in ALWAYS]
    staged = {name: out.stage(path(out.work, name)) for name in names}
    out.stage(out.work / "data.json").write_text(json.dumps({"classes": classes}, indent=2))
    for name in {size_name("train"), size_name("test"), TEST_TRUTH} - set(names):
        if path(out.work, name).exists():
            out.remove(path(out.work, name))
    return staged


def load(work, name, what, fix=FIRST, mmap=False):
    return load_npy(path(work, name), what, fix, mmap)


def load_training_set(work):
    images = load(work, TRAIN_IMAGES, "image array", mmap=True)
    masks = load(work, TRAIN_MASKS, "mask array", mmap=True)
    subjects = load(work, SUBJECTS, "subject array")
    if images.shape[:3] != masks.shape[:3] or len(subjects) != len(images):
        raise UserError(f"the arrays in {workdir(work)} do not match ({images.shape}, "
                        f"{masks.shape}, {subjects.shape}): {RERUN}")
    if images.dtype != "uint8" or masks.dtype != "uint8":
        raise UserError(f"the arrays in {workdir(work)} are not uint8: {RERUN}")
    return images, masks, subjects


def load_test_set(work):
    images = load(work, TEST_IMAGES, "test image array", mmap=True)
    ids = load(work, TEST_IDS, "test id array")
    if len(ids) != len(images):
        raise UserError(f"{path(work, TEST_IMAGES)} and {TEST_IDS}.npy disagree: {RERUN}")
    return images, ids


def load_sizes(work, split, n):
    """Each image's own (H, W) where a set mixes sizes, else None (all are the arrays' size)."""
    if not present(work, size_name(split)):
        return None
    sizes = load(work, size_name(split), "size array", RERUN)
    if sizes.shape != (n, 2):
        raise UserError(
            f"{path(work, size_name(split))} holds {sizes.shape} sizes for {n} images: {RERUN}")
    return sizes


def load_classes(work):
    """Foreground classes of the masks: 1 for binary masks, K for labels 0..K."""
    info = located(work, "data.json")
    if not info.exists():
        return 1
    try:
        classes = json.loads(info.read_text())["classes"]
    except (ValueError, KeyError, TypeError):  # not JSON, not text, no "classes"
        classes = None
    if type(classes) is not int or not 1 <= classes <= 254:  # bool is an int: not a count
        raise UserError(f"{info} is damaged: {RERUN}")
    return classes


# ---------------------------------------------------------------- writing a whole run


def image_sizes(items, one_size):
    """Each item's (H, W): from every header, or (one_size) the first image's for all."""
    if one_size:  # checked as each image decodes: no second read of every file
        return np.tile(images.image_size(items[0][1]), (len(items), 1)).astype(np.int32)
    return np.array([images.image_size(image) for _, image, _ in items], np.int32).reshape(-1, 2)


def set_bytes(sets, sizes, channels):
    """The bytes of data.py's arrays: images and masks (test masks where kept) on each set's
    canvas, and a few bytes a frame for the rest."""
    total = 0
    for split, items, masks in (("train", sets.train, 1), ("test", sets.test, sets.scored)):
        h, w = sizes[split].max(0) if len(sizes[split]) else (0, 0)
        total += len(items) * (int(h) * int(w) * (channels + int(bool(masks))) + 64)
    return total


def write_sets(sets, out, args, one_size):
    """Decode both sets (kit/layouts.py) into the arrays of `out` (files.OutputSet), which
    appear together at its commit once every file decoded. args: data.py's channels, classes,
    label_map, workers and quiet."""
    table = images.label_table(args.classes, args.label_map)
    sizes = {"train": image_sizes(sets.train, one_size), "test": image_sizes(sets.test, one_size)}
    mixed = [split for split in sizes if len(np.unique(sizes[split], axis=0)) > 1]
    names = [size_name(split) for split in mixed] + [TEST_TRUTH] * sets.scored
    check_free_space(out.work, set_bytes(sets, sizes, args.channels), "data.py's arrays")
    staged = stage_arrays(out, names, args.classes)
    decode = dict(channels=args.channels, table=table, workers=args.workers, quiet=args.quiet,
                  one_size=one_size)
    images.decode_set({
        "images": staged[TRAIN_IMAGES],
        "masks": staged[TRAIN_MASKS]
    }, sets.train, sizes["train"], desc="train", **decode)
    test_out = {"images": staged[TEST_IMAGES]}
    if sets.scored:
        test_out["masks"] = staged[TEST_TRUTH]
    images.decode_set(test_out, sets.test, sizes["test"], desc="test", **decode)
    np.save(staged[SUBJECTS], sets.subjects)
    np.save(staged[TEST_IDS], sets.ids)
    for split in mixed:
        np.save(staged[size_name(split)], sizes[split])
    kinds = len(np.unique(np.concatenate(list(sizes.values())), axis=0))
    log.info(f"{len(sets.train)} training images of {len(set(sets.subjects.tolist()))} subjects, "
             f"{len(sets.test)} test images ({kinds} size(s), {args.channels} channel(s), "
             f"{args.classes} foreground class(es)){', test masks kept' if sets.scored else ''}"
             f" -> {out.work}")


def keep_training_frames(out, keep):
    """Stage the training arrays of `out` (files.OutputSet: images, masks, subjects, sizes
    where present) again with only the frames `keep` (sorted indices), a chunk at a time: never
    the whole set in memory."""
    names = [TRAIN_IMAGES, TRAIN_MASKS, SUBJECTS, size_name("train")]
    for name in [name for name in names if present(out, name)]:
        source = load(out, name, "training array", RERUN, mmap=True)
        target = new_array(out.stage(path(out.work, name)), source.dtype,
                           (len(keep), *source.shape[1:]))
        for start in range(0, len(keep), 256):
            target[start:start + 256] = source[keep[start:start + 256]]
        target.flush()
        del target, source  # closes both maps


# ---------------------------------------------------------------- what the masks came from


def record_test_set(out, test, ids):
    """Beside the masks predict.py stages in `out`: the test arrays they are predicted from."""
    record = {"test": fingerprint(test, ids)}
    out.stage(out.work / MASKS_RECORD).write_text(json.dumps(record, indent=1))


def check_predicted_from(work, test, ids):
    """The final masks must be predictions of these test arrays: not of a test set that
    data.py has replaced since predict.py ran."""
    record, masks = Path(work) / MASKS_RECORD, path(work, TEST_MASKS)
    again = "run `python predict.py` again"
    if not record.exists():  # masks made by other means, or by an older kit
        log.warning(f"{masks} has no {record.name} saying which test set it was predicted "
                    f"from: if data.py ran since, {again}")
        return
    try:
        predicted_from = json.loads(record.read_text())["test"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{record} is damaged ({e}): {again}") from None
    if predicted_from != fingerprint(test, ids):
        raise UserError(f"{masks} was predicted from another test set than "
                        f"{path(work, TEST_IMAGES)} and {TEST_IDS}.npy: {again}")
