"""Which files make the training and test sets, for every layout data.py reads.

Each layout lists items (id, image file, [mask files]) and a subject per training image:
- the competition's: raw/train/<subject>_<frame>.tif with <subject>_<frame>_mask.tif beside
  it, raw/test/<id>.tif -- images with masks beside them, subject from the file name;
- folders: an image folder and a mask folder paired by name (--images, --masks), each image
  its own subject;
- the 2018 Data Science Bowl's: <id>/images/<id>.png with instance masks <id>/masks/*.png.
"""

import re
from dataclasses import dataclass

import numpy as np

from kit.files import UserError

EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")
TRAIN_NAME = re.compile(r"^(\d+)_(\d+)$")
MASK_SUFFIX = "_mask"


@dataclass
class Sets:
    train: list  # [(id, image path, [mask paths])]
    test: list
    subjects: np.ndarray
    ids: np.ndarray  # of the test items
    scored: bool  # the test items have masks


def natural(name):
    """Sort key: a2 before a10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def image_files(folder, what):
    """{stem: path} of the images in a folder."""
    if not folder.is_dir():
        raise UserError(f"{folder} not found: check the {what} folder")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in EXTENSIONS and not path.name.startswith("."):
            if path.stem in files:
                raise UserError(f"{path} and {files[path.stem]} have the same name: keep one")
            files[path.stem] = path
    return files


def pair(images, masks, suffix, skip_unpaired):
    """[(stem, image, [mask])] pairing each image with the mask named <stem><suffix>."""
    items = []
    for stem in sorted(images, key=natural):
        mask = masks.get(stem + suffix)
        if mask is None and not skip_unpaired:
            raise UserError(
                f"{images[stem]} has no mask {stem}{suffix}{images[stem].suffix}: add it, "
                f"delete the image, or pass --skip-unpaired (or set --mask-suffix)")
        if mask is not None:
            items.append((stem, images[stem], [mask]))
    paired = {stem + suffix for stem in images}
    orphans = sorted(m for s, m in masks.items() if s not in paired)
    if orphans and not skip_unpaired:
        stem = orphans[0].stem.removesuffix(suffix) if suffix else orphans[0].stem
        raise UserError(f"{orphans[0]} has no image {stem}{orphans[0].suffix}: add it, delete "
                        f"the mask, or pass --skip-unpaired")
    return items


def list_pairs(images_dir, masks_dir, suffix, skip_unpaired, what="training"):
    if images_dir.resolve() == masks_dir.resolve() and not suffix:
        raise UserError(
            f"images and masks share {images_dir}: tell them apart with --mask-suffix (e.g. _mask)")
    images = image_files(images_dir, f"{what} images")
    masks = image_files(masks_dir, f"{what} masks")
    if images_dir.resolve() == masks_dir.resolve():
        images = {s: p for s, p in images.items() if not s.endswith(suffix)}
        masks = {s: p for s, p in masks.items() if s.endswith(suffix)}
    if not images:
        raise UserError(f"{images_dir} holds no images ({', '.join(EXTENSIONS)})")
    return pair(images, masks, suffix, skip_unpaired)


# ---------------------------------------------------------------- the competition's


def competition(raw, skip_unpaired):
    train_dir, test_dir = raw / "train", raw / "test"
    if not train_dir.is_dir():
        raise UserError(f"{train_dir} not found: put the competition's train/ and test/ (or their "
                        f"zips) in {raw}, or run `python data.py --download` or `--demo`")
    subjects = frame_subjects(image_files(train_dir, "training images"))
    train = list_pairs(train_dir, train_dir, MASK_SUFFIX, skip_unpaired)
    test, ids = integer_ids(test_dir)
    return Sets(train, test, np.array([subjects[stem] for stem, _, _ in train], np.int32), ids,
                False)


def frame_subjects(files):
    """{stem: subject} of <subject>_<frame> names; the same frame twice is refused."""
    subjects, frames = {}, {}
    for stem, path in sorted(files.items(), key=lambda item: natural(item[0])):
        if stem.endswith(MASK_SUFFIX):
            continue
        match = TRAIN_NAME.match(stem)
        if not match:
            raise UserError(f"{path} is not named <subject>_<frame>.tif: rename it")
        frame = tuple(map(int, match.groups()))
        if frame in frames:
            raise UserError(f"{path} and {frames[frame]} are the same frame: remove one")
        frames[frame], subjects[stem] = path, frame[0]
    return subjects


def integer_ids(folder):
    """Test items named <integer id>, sorted by id: Kaggle scores them by these ids."""
    if not folder.is_dir():
        raise UserError(f"{folder} not found: put the competition's test/ folder (or test.zip) "
                        f"in {folder.parent}")
    ids = {}
    for stem, path in image_files(folder, "test images").items():
        if not stem.isdigit():
            raise UserError(f"{path} is not named <integer id>{path.suffix}: test images must "
                            f"keep their Kaggle names")
        if int(stem) in ids:
            raise UserError(f"{path} and {ids[int(stem)]} have the same id: remove one")
        ids[int(stem)] = path
    if not ids:
        raise UserError(f"{folder} holds no test images (<id>.tif)")
    order = sorted(ids)
    return [(i, ids[i], []) for i in order], np.array(order, np.int32)


# ---------------------------------------------------------------- folders and DSB sets


def is_dsb(folder):
    return folder.is_dir() and any((d / "images").is_dir() for d in folder.iterdir())


def list_dsb(folder):
    """[(id, image, [instance masks])] of a DSB-style folder; no masks where masks/ is absent."""
    items = []
    for d in sorted((d for d in folder.iterdir() if (d / "images").is_dir()),
                    key=lambda d: natural(d.name)):
        images = sorted(image_files(d / "images", "images").values())
        if len(images) != 1:
            raise UserError(f"{d / 'images'} holds {len(images)} images: it must hold exactly one")
        masks = sorted(image_files(d / "masks", "masks").values()) if (d / "masks").is_dir() else []
        items.append((d.name, images[0], masks))
    return items


def training_folders(args):
    if args.dsb:
        if not args.dsb.is_dir():
            raise UserError(f"{args.dsb} not found: check --dsb")
        train = list_dsb(args.dsb)
        if not train or any(not masks for _, _, masks in train):
            raise UserError(f"{args.dsb} needs <id>/images/<id>.png and <id>/masks/*.png folders")
        return train
    if not args.masks:
        raise UserError("--images needs --masks (or use --dsb for DSB-style folders)")
    return list_pairs(args.images, args.masks, args.mask_suffix, args.skip_unpaired)


def test_folders(args, train):
    """(training items, test items, whether the test items have masks)."""
    if args.holdout:
        if args.test_images:
            raise UserError("--holdout and --test-images both name a test set: give one of them")
        if not 0 < args.holdout < len(train):
            raise UserError(
                f"--holdout {args.holdout} must leave training images (there are {len(train)})")
        return train[:-args.holdout], train[-args.holdout:], True
    if not args.test_images:
        raise UserError(
            "no test set: give --test-images DIR (and --test-masks DIR to score it) or --holdout N")
    if is_dsb(args.test_images):
        test = list_dsb(args.test_images)
        return train, test, all(masks for _, _, masks in test)
    if args.test_masks:
        return (train, list_pairs(args.test_images, args.test_masks, args.mask_suffix, False,
                                  "test"), True)
    files = image_files(args.test_images, "test images")
    if not files:
        raise UserError(f"{args.test_images} holds no images ({', '.join(EXTENSIONS)})")
    return train, [(stem, files[stem], []) for stem in sorted(files, key=natural)], False


def folders(args):
    """The folder layouts' sets: every training image its own subject, ids the file names."""
    train, test, scored = test_folders(args, training_folders(args))
    return Sets(train, test, np.arange(len(train), dtype=np.int32),
                np.array([i for i, _, _ in test]), scored)
