"""The layouts data.py reads besides the competition's: an image folder with a mask folder
paired by name, and per-image folders with instance masks like the 2018 Data Science Bowl's
(<id>/images/<id>.png, <id>/masks/*.png, merged into one mask).

Images may be PNG, TIFF, JPEG, BMP or GIF, 8-bit grayscale or colour (--channels 3 keeps RGB).
Sets of mixed sizes are stored without resizing: top-left on a canvas as large as the largest
image, zero elsewhere, with each image's own (H, W) in imgs_size_<split>.npy (written only when
the sizes differ), so that training crops each image's own part and predictions come back at
each image's original size. Masks are binary (0/255 or 0/1) or, with --classes K, labels 0..K
(data.json records K for train.py); palette PNGs are read as their label indices, instance
masks are merged. --label-map FROM:TO remaps mask values first (e.g. 0:1 255:0 where 0 marks
the foreground). Test masks, when given, are kept as imgs_truth_test.npy for submission.py to score.
"""

import contextlib
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

import common
from common import UserError, log

EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")
FOLDER_OUTPUTS = ("imgs_train", "imgs_mask_train", "imgs_subject_train", "imgs_test", "imgs_id_test")


def add_arguments(p):
    g = p.add_argument_group("other layouts (instead of the competition's raw/train and raw/test)")
    g.add_argument("--images", type=common.Path, metavar="DIR", help="folder of training images, paired with --masks by name")
    g.add_argument("--masks", type=common.Path, metavar="DIR", help="folder of training masks")
    g.add_argument("--mask-suffix", default="", help="a mask's name is its image's name plus this (e.g. _mask)")
    g.add_argument("--dsb", type=common.Path, metavar="DIR",
                   help="folder of <id>/images/<id>.png with <id>/masks/*.png (instance masks, merged)")
    g.add_argument("--test-images", type=common.Path, metavar="DIR", help="folder of test images (or of DSB-style <id>/ folders)")
    g.add_argument("--test-masks", type=common.Path, metavar="DIR", help="their masks, kept as imgs_truth_test.npy for scoring")
    g.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="the last N training images (by name) become the test set, their masks kept for scoring")
    g.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1: grayscale, 3: RGB")
    g.add_argument("--classes", type=int, default=1, metavar="K",
                   help="foreground classes: 1 for binary masks, K for label masks 0..K (softmax U-Net)")
    g.add_argument("--label-map", nargs="+", default=[], metavar="FROM:TO",
                   help="mask values to remap before checking them, e.g. 0:1 255:0")


# ---------------------------------------------------------------- listing

def natural(name):
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


def is_dsb(folder):
    return folder.is_dir() and any((d / "images").is_dir() for d in folder.iterdir())


def list_dsb(folder):
    """[(id, image, [instance masks])] of a DSB-style folder; masks are empty where masks/ is absent."""
    items = []
    for d in sorted((d for d in folder.iterdir() if (d / "images").is_dir()), key=lambda d: natural(d.name)):
        images = sorted(image_files(d / "images", "images").values())
        if len(images) != 1:
            raise UserError(f"{d / 'images'} holds {len(images)} images: it must hold exactly one")
        masks = sorted(image_files(d / "masks", "masks").values()) if (d / "masks").is_dir() else []
        items.append((d.name, images[0], masks))
    return items


def list_pairs(images_dir, masks_dir, suffix, skip_unpaired, what="training"):
    """[(id, image, [mask])] pairing each image with the mask named <stem><suffix>."""
    if images_dir.resolve() == masks_dir.resolve() and not suffix:
        raise UserError(f"images and masks share {images_dir}: tell them apart with --mask-suffix (e.g. _mask)")
    images = image_files(images_dir, f"{what} images")
    masks = image_files(masks_dir, f"{what} masks")
    if images_dir.resolve() == masks_dir.resolve():
        images = {s: p for s, p in images.items() if not s.endswith(suffix)}
    if not images:
        raise UserError(f"{images_dir} holds no images ({', '.join(EXTENSIONS)})")
    items = []
    for stem in sorted(images, key=natural):
        mask = masks.get(stem + suffix)
        if mask is None and not skip_unpaired:
            raise UserError(f"{images[stem]} has no mask {masks_dir / (stem + suffix)}.png (or .tif, .jpg): "
                            f"add it, set --mask-suffix, or pass --skip-unpaired")
        if mask is not None:
            items.append((stem, images[stem], [mask]))
    paired = {stem + suffix for stem in images}
    same = images_dir.resolve() == masks_dir.resolve()
    orphans = sorted(m for s, m in masks.items() if s not in paired and not (same and s in images))
    if orphans and not skip_unpaired:
        raise UserError(f"{orphans[0]} has no image in {images_dir}: add it, delete the mask, or pass --skip-unpaired")
    return items


def list_sets(args):
    """(training items, test items, whether the test items have masks)."""
    if args.dsb:
        if not args.dsb.is_dir():
            raise UserError(f"{args.dsb} not found: check --dsb")
        train = list_dsb(args.dsb)
        if not train or any(not masks for _, _, masks in train):
            raise UserError(f"{args.dsb} needs <id>/images/<id>.png and <id>/masks/*.png folders")
    else:
        if not args.masks:
            raise UserError("--images needs --masks (or use --dsb for DSB-style folders)")
        train = list_pairs(args.images, args.masks, args.mask_suffix, args.skip_unpaired)
    if args.holdout:
        if args.test_images:
            raise UserError("--holdout and --test-images both name a test set: give one of them")
        if not 0 < args.holdout < len(train):
            raise UserError(f"--holdout {args.holdout} must leave training images (there are {len(train)})")
        return train[:-args.holdout], train[-args.holdout:], True
    if not args.test_images:
        raise UserError("no test set: give --test-images DIR (and --test-masks DIR to score it) or --holdout N")
    if is_dsb(args.test_images):
        test = list_dsb(args.test_images)
        return train, test, all(masks for _, _, masks in test)
    if args.test_masks:
        return train, list_pairs(args.test_images, args.test_masks, args.mask_suffix, False, "test"), True
    files = image_files(args.test_images, "test images")
    if not files:
        raise UserError(f"{args.test_images} holds no images ({', '.join(EXTENSIONS)})")
    return train, [(stem, files[stem], []) for stem in sorted(files, key=natural)], False


# ---------------------------------------------------------------- reading

def open_image(path):
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path} cannot be decoded ({e}): replace it with the original") from None
    return image


def image_size(path):
    try:
        with Image.open(path) as image:   # reads the header only
            return image.height, image.width
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path} cannot be decoded ({e}): replace it with the original") from None


def read_image(path, channels):
    image = open_image(path)
    if image.mode not in EIGHT_BIT_MODES:
        raise UserError(f"{path} is a {image.mode} image, not 8-bit: convert it to 8-bit grayscale or RGB")
    return np.asarray(image.convert("L" if channels == 1 else "RGB"))


def label_table(classes, label_map):
    """Lookup table from mask values to classes; -1 marks values a mask may not hold."""
    table = np.full(256, -1, np.int16)
    table[:classes + 1] = np.arange(classes + 1)
    if classes == 1:
        table[255] = 1
    for item in label_map:
        try:
            source, target = map(int, item.split(":"))
        except ValueError:
            raise UserError(f"--label-map {item}: write FROM:TO with integers, e.g. 255:1") from None
        if not (0 <= source <= 255 and 0 <= target <= classes):
            raise UserError(f"--label-map {item}: FROM must be 0..255 and TO a class 0..{classes}")
        table[source] = target
    return table


def read_mask(paths, shape, table, classes):
    """One label mask from one file, or from several instance masks merged (the largest label wins)."""
    merged = np.zeros(shape, np.uint8)
    for path in paths:
        image = open_image(path)
        if image.mode in ("RGB", "RGBA"):
            rgb = np.asarray(image.convert("RGB"))
            if (rgb != rgb[..., :1]).any():
                raise UserError(f"{path} is a colour mask: save masks as single-channel (or palette) images")
            values = rgb[..., 0]
        elif image.mode in ("1", "L", "P", "LA", "PA"):
            values = np.asarray(image if image.mode in ("1", "L", "P") else image.getchannel(0)).astype(np.uint8)
        else:
            raise UserError(f"{path} is a {image.mode} mask: save masks as 8-bit single-channel images")
        if path.suffix.lower() in (".jpg", ".jpeg") and classes == 1:
            values = np.where(values > 127, 255, 0).astype(np.uint8)   # JPEG blurs the two values
        if values.shape != tuple(shape):
            raise UserError(f"{path} is {values.shape[1]}x{values.shape[0]} but its image is "
                            f"{shape[1]}x{shape[0]}: a mask must match its image")
        labels = table[values]
        if (labels < 0).any():
            bad = np.unique(values[labels < 0])[:6].tolist()
            raise UserError(f"{path} holds values {bad}: masks must hold 0..{classes}"
                            f"{' (or 255)' if classes == 1 else ''}; set --classes, or remap with --label-map")
        np.maximum(merged, labels.astype(np.uint8), out=merged)
    return merged


def decode_set(out, items, sizes, channels, table, classes, workers, quiet, desc):
    """Decode a set onto its canvas: memory-mapped .npy files as large as its largest image."""
    canvas = tuple(int(n) for n in sizes.max(0))
    color = (3,) if channels == 3 else ()
    images = np.lib.format.open_memmap(out["images"], mode="w+", dtype=np.uint8, shape=(len(items), *canvas, *color))
    masks = None
    if "masks" in out:
        masks = np.lib.format.open_memmap(out["masks"], mode="w+", dtype=np.uint8, shape=(len(items), *canvas))

    def load(i):
        _, image_path, mask_paths = items[i]
        image = read_image(image_path, channels)
        h, w = sizes[i]
        if image.shape[:2] != (h, w):
            raise UserError(f"{image_path} decodes to {image.shape[1]}x{image.shape[0]}, not the "
                            f"{w}x{h} its header says: replace it with the original")
        images[i, :h, :w] = image
        if masks is not None:
            masks[i, :h, :w] = read_mask(mask_paths, (h, w), table, classes)

    with ThreadPoolExecutor(workers) as pool:
        for _ in common.progress(pool.map(load, range(len(items))), quiet, total=len(items), desc=desc):
            pass
    images.flush()
    if masks is not None:
        masks.flush()


# ---------------------------------------------------------------- writing

def convert(args):
    """Everything data.py writes, for the layouts of this module."""
    if args.classes < 1:
        raise UserError(f"--classes {args.classes}: give at least 1 foreground class")
    table = label_table(args.classes, args.label_map)
    train, test, scored = list_sets(args)
    sizes = {split: np.array([image_size(image) for _, image, _ in items], np.int32)
             for split, items in (("train", train), ("test", test))}
    mixed = [split for split in sizes if len(np.unique(sizes[split], axis=0)) > 1]
    work = args.workdir
    names = list(FOLDER_OUTPUTS) + [f"imgs_size_{split}" for split in mixed] + (["imgs_truth_test"] if scored else [])
    # All outputs appear together, only once every file decoded: no half-converted workdir.
    with contextlib.ExitStack() as stack:
        out = {name: stack.enter_context(common.atomic_path(work / f"{name}.npy")) for name in names}
        info = stack.enter_context(common.atomic_path(work / "data.json"))
        decode_set({"images": out["imgs_train"], "masks": out["imgs_mask_train"]}, train, sizes["train"],
                   args.channels, table, args.classes, args.workers, args.quiet, "train")
        test_out = {"images": out["imgs_test"], **({"masks": out["imgs_truth_test"]} if scored else {})}
        decode_set(test_out, test, sizes["test"], args.channels, table, args.classes, args.workers, args.quiet, "test")
        np.save(out["imgs_subject_train"], np.arange(len(train), dtype=np.int32))   # every image its own subject
        np.save(out["imgs_id_test"], np.array([i for i, _, _ in test]))
        for split in mixed:
            np.save(out[f"imgs_size_{split}"], sizes[split])
        info.write_text(json.dumps({"classes": args.classes}, indent=2))
    # One size: the arrays' shape says it all, and no earlier run's sizes or answers may linger.
    for name in {"imgs_size_train", "imgs_size_test", "imgs_truth_test"} - set(names):
        (work / f"{name}.npy").unlink(missing_ok=True)
    kinds = f"{len(np.unique(np.concatenate(list(sizes.values())), axis=0))} size(s)"
    log.info(f"{len(train)} training and {len(test)} test images ({kinds}, {args.channels} channel(s), "
             f"{args.classes} foreground class(es)){', test masks kept for scoring' if scored else ''} -> {work}")


def write_competition_info(work):
    """The competition's layout is binary, grayscale and of one size: say so, over any earlier run's files."""
    with common.atomic_path(work / "data.json") as tmp:
        tmp.write_text(json.dumps({"classes": 1}, indent=2))
    for name in ("imgs_size_train", "imgs_size_test", "imgs_truth_test"):
        (work / f"{name}.npy").unlink(missing_ok=True)
