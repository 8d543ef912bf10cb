"""Pixels: one reader for the images and masks of every layout, decoding a whole set in
parallel straight into memory-mapped arrays, and resizing stacks of images.

Pillow decodes: its decoders raise on every error they report (a bad LZW code in a TIFF, a
truncated JPEG, a PNG's damaged data), where OpenCV's only log them and return what they could
read, and its libtiff decodes the competition's LZW TIFFs as fast as OpenCV's. OpenCV steps in
only for the formats Pillow lacks; it resizes and converts colours (dropping the GIL)."""

import ctypes
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError

from kit.cli import progress
from kit.files import UserError, atomic_path, new_array

log = logging.getLogger(__name__)
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
AS_STORED = ("L", "RGB", "RGBA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
DAMAGED = (OSError, SyntaxError, ValueError)  # what Pillow raises on a file it cannot decode
said_colour = []  # warn about colour images once a run, not once an image


def quiet_libtiff():
    """Turn off the stderr handlers of Pillow's libtiff: it prints each error ("Using code not
    yet in table") as well as failing, and the kit reports the file in one line of its own.
    Where libtiff is built into Pillow (Windows) it cannot be reached, and prints."""
    try:
        with open("/proc/self/maps") as maps:  # Linux: the libraries this process has loaded
            loaded = {line.split(None, 5)[-1].strip() for line in maps if "libtiff" in line}
    except OSError:
        loaded = set()
    loaded.update(map(str, Path(PIL.__file__).parent.glob(".dylibs/libtiff*")))  # macOS wheels
    for path in sorted(loaded):
        if not os.path.basename(path).startswith("libtiff"):
            continue
        try:
            lib = ctypes.CDLL(path)
            for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                setter = getattr(lib, name)
                setter.argtypes, setter.restype = [ctypes.c_void_p], ctypes.c_void_p
                setter(None)
        except (OSError, AttributeError):
            pass


quiet_libtiff()
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # errors: one line, below

# ---------------------------------------------------------------- one file


def check_tiff(path):
    if path.suffix.lower() in (".tif", ".tiff"):
        with open(path, "rb") as f:
            head = f.read(4)
        if head not in TIFF_MAGIC:
            raise UserError(
                f"{path} is not a TIFF file (it starts with {head!r}): replace it with the original"
            )


def damaged(path, e):
    return UserError(
        f"{path} cannot be decoded (corrupt or truncated: {e}): replace it with the original")


def stored_bits(image):
    """16 where Pillow would quietly reduce 16-bit colour to 8 bits ("RGB;16B"), else 8."""
    args = image.tile[0].args if image.tile else ""
    rawmode = str(args[0] if isinstance(args, tuple) and args else args)
    return 16 if ";16" in rawmode and image.mode in ("RGB", "RGBA") else 8


def pixels(image, palette):
    """A loaded Pillow image as an array: gray (H, W), RGB(A) (H, W, 3|4), a palette image's
    indices with palette (else its colours); 16-bit and float modes as stored."""
    if image.mode in ("P", "PA") and palette:
        return np.asarray(image if image.mode == "P" else image.getchannel(0))
    if image.mode == "1":  # as 0/255, as OpenCV reads it
        return np.asarray(image.convert("L"))
    if image.mode in ("LA", "La"):
        return np.asarray(image.getchannel(0))
    if image.mode in AS_STORED:
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def opencv(path):
    """A format Pillow does not know, through OpenCV, channels as RGB(A)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise damaged(path, "neither Pillow nor OpenCV can read it")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.shape[2] == 3 else
                             cv2.COLOR_BGRA2RGBA)
    return image


def decode(path, palette=False):
    """The pixels of one file, channels in RGB(A) order; with palette, a palette image's
    indices rather than its colours. Every error the decoder reports is a UserError: Pillow
    raises on a truncated file (LOAD_TRUNCATED_IMAGES stays False) and on a bad code."""
    check_tiff(path)
    try:
        with Image.open(path) as image:
            bits = stored_bits(image)
            image.load()
            array = pixels(image, palette)
    except UnidentifiedImageError:
        bits, array = 8, opencv(path)
    except DAMAGED as e:
        raise damaged(path, e) from None
    if bits != 8 or array.dtype != np.uint8:
        raise UserError(f"{path} is {'uint16' if bits == 16 else array.dtype.name}, not 8-bit: "
                        f"convert it to 8-bit grayscale or RGB")
    return array


def image_size(path):
    """(H, W) from the file's header, without decoding it."""
    check_tiff(path)
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except DAMAGED as e:
        raise damaged(path, e) from None


def read_image(path, channels=1):
    """(H, W) grayscale or (H, W, 3) RGB, uint8."""
    image = decode(path)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if channels == 3:
        if image.ndim == 3 and image.shape[2] == 3:
            return image
        return cv2.cvtColor(image,
                            cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_RGBA2RGB)
    if image.ndim == 3:
        gray = cv2.cvtColor(image,
                            cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY)
        if not said_colour and (image[..., :3] != image[..., :1]).any():
            said_colour.append(path)
            log.warning(f"warning: {path} is a colour image: colour images are converted to "
                        f"grayscale (data.py --channels 3 keeps colour)")
        image = gray
    return image


FORBIDDEN = 255   # in a label table: a value no mask may hold (so at most 254 classes)


def label_table(classes, label_map=()):
    """Lookup table (256 uint8, for cv2.LUT) from mask values to classes; FORBIDDEN marks the
    values a mask may not hold."""
    table = np.full(256, FORBIDDEN, np.uint8)
    table[:classes + 1] = np.arange(classes + 1)
    if classes == 1:
        table[255] = 1
    for item in label_map:
        try:
            source, target = map(int, item.split(":"))
        except ValueError:
            raise UserError(
                f"--label-map {item}: write FROM:TO with integers, e.g. 255:1") from None
        if not (0 <= source <= 255 and 0 <= target <= classes):
            raise UserError(f"--label-map {item}: FROM must be 0..255 and TO a class 0..{classes}")
        table[source] = target
    return table


def mask_values(path):
    """A mask file's values: single-channel, palette indices, or gray stored as colour."""
    values = decode(path, palette=True)
    if values.ndim == 3:
        if (values[..., :3] != values[..., :1]).any():
            raise UserError(
                f"{path} is a colour mask: save masks as single-channel (or palette) images")
        values = values[..., 0]
    return values


def read_mask(paths, image_path, shape, table):
    """One label mask from one file, or from several instance masks merged (the largest label
    wins), each checked against the image's size and the values a mask may hold."""
    classes = int(table[table != FORBIDDEN].max())
    merged = None
    for path in paths:
        values = mask_values(path)
        if path.suffix.lower() in (".jpg", ".jpeg") and classes == 1:
            values = np.where(values > 127, 255, 0).astype(np.uint8)  # JPEG blurs the two values
        if values.shape != tuple(shape):
            raise UserError(f"{path} is {values.shape[1]}x{values.shape[0]} but its image "
                            f"{image_path.name} is {shape[1]}x{shape[0]}: a mask must have its "
                            f"image's size")
        labels = cv2.LUT(np.ascontiguousarray(values), table)  # drops the GIL, unlike NumPy
        if (labels == FORBIDDEN).any():
            raise UserError(bad_values_message(path, values[labels == FORBIDDEN], classes))
        merged = labels if merged is None else np.maximum(merged, labels, out=merged)
    return np.zeros(shape, np.uint8) if merged is None else merged


def bad_values_message(path, bad, classes):
    bad = np.unique(bad)[:6].tolist()
    if classes == 1:
        return (f"{path} is not a binary mask (values {bad}...): masks must hold 0 and 255 "
                f"(or 0 and 1); for label masks set --classes, or remap with --label-map")
    return (f"{path} holds values {bad}: masks must hold 0..{classes}; set --classes, "
            f"or remap with --label-map")


# ---------------------------------------------------------------- a whole set


def decode_set(out, items, sizes, channels, table, workers, quiet, desc, one_size=False):
    """Decode items [(id, image, [masks])] onto a canvas as large as the largest image
    (top-left, zero elsewhere), into memory-mapped .npy files out["images"] (and out["masks"]):
    one copy in memory at most, every core decoding. one_size: all must have the first's size."""
    canvas = tuple(int(n) for n in sizes.max(0))
    color = (3, ) if channels == 3 else ()
    images = new_array(out["images"], np.uint8, (len(items), *canvas, *color))
    masks = new_array(out["masks"], np.uint8, (len(items), *canvas)) if "masks" in out else None

    def load(i):
        _, image_path, mask_paths = items[i]
        image = read_image(image_path, channels)
        h, w = sizes[i]
        if image.shape[:2] != (h, w):
            rule = (f"{items[0][1]} is {w}x{h}: all images of a set must share one size"
                    if one_size else f"its header says {w}x{h}: replace it with the original")
            raise UserError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but {rule}")
        images[i, :h, :w] = image
        if masks is not None:
            masks[i, :h, :w] = read_mask(mask_paths, image_path, (h, w), table)

    with ThreadPoolExecutor(workers) as pool:
        for _ in progress(pool.map(load, range(len(items))), quiet, total=len(items), desc=desc):
            pass


# ---------------------------------------------------------------- resizing


def resize_stack(images, size, interpolation, out=None, crop=None, place=None):
    """Resize a stack of images (N, H, W[, C]) to size (H, W), in parallel threads (OpenCV drops
    the GIL). Sets of mixed sizes lie top-left on a common canvas, with each one's size:
    crop=sizes resizes each image's own part, place=sizes resizes each to its own size on
    the canvas."""
    h, w = size
    if out is None:
        out = np.empty((len(images), h, w, *images.shape[3:]), images.dtype)

    def one(i):
        image = np.asarray(images[i])
        if crop is not None:
            image = image[:crop[i][0], :crop[i][1]]
        th, tw = (h, w) if place is None else (int(place[i][0]), int(place[i][1]))
        resized = cv2.resize(image, (tw, th), interpolation=INTERPOLATION[interpolation])
        if place is not None:
            out[i] = 0
        out[i, :th, :tw] = resized.reshape(out[i, :th, :tw].shape)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, range(len(images))))
    return out


def save_pngs(folder, masks, ids, sizes, binary):
    """Each mask as <id>.png at its image's size: 0/255 for binary masks, the labels 0..K else."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, (mask, i) in enumerate(zip(masks, ids)):
        h, w = sizes[n] if sizes is not None else mask.shape
        mask = np.asarray(mask)[:h, :w] * (255 if binary else 1)
        with atomic_path(folder / f"{i}.png") as tmp:
            cv2.imwrite(str(tmp), mask.astype(np.uint8))
