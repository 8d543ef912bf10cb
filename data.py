"""Turn the competition's TIFF files into NumPy arrays.

    python data.py              # raw/train, raw/test (or the zips in raw/) -> work/*.npy
    python data.py --download   # fetch the competition from Kaggle first
    python data.py --demo       # write a small synthetic competition into --raw first
    python data.py --images DIR --masks DIR --test-images DIR   # any folder of images and masks

Outputs in --workdir: imgs_train.npy (N, H, W) uint8, imgs_mask_train.npy (N, H, W) {0, 1},
imgs_subject_train.npy (N,), imgs_test.npy (M, H, W) uint8, imgs_id_test.npy (M,) sorted,
data.json (the number of foreground classes). Other layouts, colour, mixed sizes and label
masks: see layouts.py.
"""

import contextlib
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

import common
import layouts
from common import UserError, log

TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
MAX_UNZIPPED_BYTES = 64 * 2**30   # the real competition unzips to about 2 GB
MAX_ZIP_RATIO = 200               # TIFFs compress a few times, zip bombs a million times

if not common.VERBOSE:   # a damaged TIFF is reported in one line below, not by libtiff's own lines
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def get_args():
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--download", action="store_true", help="download the competition from Kaggle into --raw")
    p.add_argument("--competition", default=common.COMPETITION, help="Kaggle competition slug")
    p.add_argument("--demo", action="store_true", help="write a synthetic demo competition into --raw")
    p.add_argument("--demo-size", type=int, nargs=2, default=[420, 580], metavar=("H", "W"),
                   help="image size of the demo data")
    p.add_argument("--demo-subjects", type=int, default=8, help="subjects in the demo training set")
    p.add_argument("--skip-unpaired", action="store_true",
                   help="skip training images without a mask (and masks without an image)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="decoding threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo data")
    layouts.add_arguments(p)
    return p.parse_args()


# ---------------------------------------------------------------- zips

def check_members(archive, dest):
    dest = dest.resolve()
    total = 0
    for info in archive.infolist():
        target = (dest / info.filename).resolve()
        if info.filename.startswith(("/", "\\")) or not target.is_relative_to(dest):
            raise UserError(f"{archive.filename}: member {info.filename!r} would land outside the "
                            f"folder it is extracted into; refusing to extract a suspicious zip")
        total += info.file_size
        if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size > 2**20:
            raise UserError(f"{archive.filename}: member {info.filename!r} expands "
                            f"{info.file_size // info.compress_size}x; refusing a likely zip bomb")
    if total > MAX_UNZIPPED_BYTES:
        raise UserError(f"{archive.filename} would unzip to {total / 2**30:.0f} GiB; refusing a likely zip bomb")


def extract(zip_path, dest):
    try:
        with zipfile.ZipFile(zip_path) as archive:
            check_members(archive, dest)
            archive.extractall(dest)
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise UserError(f"{zip_path} is corrupt or truncated ({e}): download it again") from None


def has_train_test(folder):
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def writable(folder):
    """False for a Kaggle notebook's input (mounted read-only), and for any folder we may not write."""
    inside_input = folder.resolve().is_relative_to(common.kaggle_input_root().resolve())
    return os.access(folder, os.W_OK) and not inside_input


def unpack_zips(raw, work):
    """Extract competition zips found in raw/ (outer zip, nested train.zip/test.zip/*.csv.zip) and
    return the folder holding train/ and test/: raw/ itself, or <workdir>/raw when raw/ is read-only."""
    if has_train_test(raw):
        return raw
    zips = sorted(raw.glob("*.zip"))
    if not zips:
        return raw
    dest = raw
    if not writable(raw):
        dest = work / "raw"
        if has_train_test(dest):
            return dest
        log.info(f"{raw} is read-only: extracting its zips into {dest}")
        dest.mkdir(parents=True, exist_ok=True)
    # Extract into a scratch folder first so that a bad zip leaves dest/ as it was.
    with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack-") as scratch:
        scratch = Path(scratch)
        for z in zips:
            log.info(f"extracting {z}")
            extract(z, scratch)
        for nested in sorted(scratch.rglob("*.zip")):
            extract(nested, nested.parent)
            nested.unlink()
        roots = {p.parent for p in scratch.rglob("train") if p.is_dir()} or {scratch}
        root = min(roots, key=lambda p: len(p.parts))
        for item in sorted(root.iterdir()):
            if not (dest / item.name).exists():
                shutil.move(str(item), dest / item.name)
    return dest


def download(competition, raw, quiet):
    """Fetch the competition zip into raw/ unless its files are there already."""
    if common.in_kaggle_notebook():
        # Competition notebooks run offline; Kaggle mounts the data under /kaggle/input instead.
        log.info(f"in a Kaggle notebook: not downloading, the competition files are read from "
                 f"{common.kaggle_input_root()}")
        return
    if has_train_test(raw):
        return
    import kaggle_io
    kaggle_io.download(competition, raw, quiet=quiet)


# ---------------------------------------------------------------- reading images

said_colour = []


def read_image(path, is_mask=False):
    with open(path, "rb") as f:
        head = f.read(4)
    if path.suffix.lower() in (".tif", ".tiff") and head not in TIFF_MAGIC:
        raise UserError(f"{path} is not a TIFF file (it starts with {head!r}): replace it with the original")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"{path} cannot be decoded (corrupt or truncated): replace it with the original")
    if image.dtype != np.uint8:
        raise UserError(f"{path} is {image.dtype}, not 8-bit: convert it to 8-bit grayscale")
    if image.ndim == 3:
        if is_mask:
            raise UserError(f"{path} is a colour mask: save masks as single-channel images")
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        if not said_colour:
            said_colour.append(path)
            log.warning(f"warning: {path} is a colour image: colour images are converted to grayscale")
    if is_mask:
        set_pixels = np.count_nonzero(image == 1) + np.count_nonzero(image == 255)   # 20x faster than np.unique
        if np.count_nonzero(image) != set_pixels:
            values = np.unique(image)
            raise UserError(f"{path} is not a binary mask (values {values[:6].tolist()}...): "
                            f"masks must hold 0 and 255 (or 0 and 1)")
        image = (image > 0).astype(np.uint8)
    return image


def image_size(path):
    return read_image(path).shape


def decode_into(tmp, paths, is_mask, workers, quiet, desc, images=None):
    """Decode `paths` in parallel straight into a memory-mapped .npy (one copy in memory at most).
    Every image must have the first one's size; masks, that of `images`, their images."""
    shape = image_size(images[0] if images else paths[0])
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))

    def load(i):
        image = read_image(paths[i], is_mask)
        if image.shape != shape:
            other, rule = ((images[i], "a mask must have its image's size") if images else
                           (paths[0], "all images of a set must share one size"))
            raise UserError(f"{paths[i]} is {image.shape[1]}x{image.shape[0]} but {other} is "
                            f"{shape[1]}x{shape[0]}: {rule}")
        out[i] = image

    with ThreadPoolExecutor(workers) as pool:
        for _ in common.progress(pool.map(load, range(len(paths))), quiet, total=len(paths), desc=desc):
            pass
    out.flush()


# ---------------------------------------------------------------- the competition's layout

TRAIN_NAME = re.compile(r"^(\d+)_(\d+)$")


def list_train(folder, skip_unpaired):
    if not folder.is_dir():
        raise UserError(f"{folder} not found: put the competition's train/ and test/ (or their zips) "
                        f"in {folder.parent}, or run `python data.py --download` or `--demo`")
    images, masks, subjects, frames = [], [], [], {}
    stems = {p.stem for p in folder.glob("*.tif")}
    for stem in sorted(stems, key=sort_key):
        if stem.endswith("_mask"):
            if stem[:-5] not in stems and not skip_unpaired:
                raise UserError(f"{folder / stem}.tif has no image {stem[:-5]}.tif: add the image, "
                                f"delete the mask, or pass --skip-unpaired")
            continue
        match = TRAIN_NAME.match(stem)
        if not match:
            raise UserError(f"{folder / stem}.tif is not named <subject>_<frame>.tif: rename it")
        frame = tuple(map(int, match.groups()))
        if frame in frames:
            raise UserError(f"{folder / stem}.tif and {frames[frame]} are the same frame: remove one")
        frames[frame] = folder / f"{stem}.tif"
        if stem + "_mask" not in stems:
            if skip_unpaired:
                continue
            raise UserError(f"{folder / stem}.tif has no mask {stem}_mask.tif: add the mask, "
                            f"delete the image, or pass --skip-unpaired")
        images.append(folder / f"{stem}.tif")
        masks.append(folder / f"{stem}_mask.tif")
        subjects.append(int(match.group(1)))
    if not images:
        raise UserError(f"{folder} holds no training images (<subject>_<frame>.tif with _mask.tif)")
    return images, masks, np.array(subjects, np.int32)


def sort_key(stem):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def list_test(folder):
    if not folder.is_dir():
        raise UserError(f"{folder} not found: put the competition's test/ folder (or test.zip) in {folder.parent}")
    ids = {}
    for path in folder.glob("*.tif"):
        if not path.stem.isdigit():
            raise UserError(f"{path} is not named <integer id>.tif: test images must keep their Kaggle names")
        if int(path.stem) in ids:
            raise UserError(f"{path} and {ids[int(path.stem)]} have the same id: remove one")
        ids[int(path.stem)] = path
    if not ids:
        raise UserError(f"{folder} holds no test images (<id>.tif)")
    order = sorted(ids)
    return [ids[i] for i in order], np.array(order, np.int32)


# ---------------------------------------------------------------- the demo competition

def speckle_frame(rng, h, w, subject_texture):
    """Ultrasound-like background: layered tissue bands under multiplicative Rayleigh speckle."""
    y = np.linspace(0, 1, h)[:, None]
    bands = 0.45 + 0.15 * np.sin(2 * np.pi * (3 * y + subject_texture[0]) + 2 * np.sin(4 * y))
    tissue = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 9) * 0.8
    tissue += np.broadcast_to(bands, (h, w))
    speckle = rng.rayleigh(0.8, (h, w)).astype(np.float32)
    return np.clip(tissue * speckle * (1.1 - 0.5 * y), 0, None)


def nerve_mask(rng, h, w, center):
    cy, cx = center + rng.normal(0, 0.03, 2)
    mask = np.zeros((h, w), np.uint8)
    axes = (int(w * rng.uniform(0.06, 0.09)), int(h * rng.uniform(0.05, 0.08)))
    cv2.ellipse(mask, (int(cx * w), int(cy * h)), axes, rng.uniform(-20, 20), 0, 360, 1, -1)
    return mask


def demo_frame(rng, h, w, subject_center, texture, has_nerve):
    frame = speckle_frame(rng, h, w, texture)
    mask = nerve_mask(rng, h, w, subject_center) if has_nerve else np.zeros((h, w), np.uint8)
    if has_nerve:
        inside = mask.astype(np.float32)
        rim = cv2.dilate(mask, np.ones((9, 9), np.uint8)) - mask
        frame = frame * (1 - 0.6 * inside) + 1.2 * rim * frame.mean()
    image = np.clip(frame / np.percentile(frame, 99.5) * 230, 0, 255).astype(np.uint8)
    return image, mask


def write_tiff(path, image):
    # OpenCV writes LZW-compressed TIFFs, as the competition's files are.
    if not cv2.imwrite(str(path), image):
        raise UserError(f"cannot write {path}: check that the folder is writable")


def make_demo(raw, h, w, n_subjects, seed, quiet):
    """A small synthetic competition in the real layout, with the test set's answers in test_masks/."""
    for name in ("train", "test", "test_masks"):
        if (raw / name).exists() and any((raw / name).iterdir()):
            raise UserError(f"{raw / name} already holds files: give --demo an empty --raw folder")
        (raw / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = [(s, n) for s in range(1, n_subjects + 3) for n in range(1, 21)]
    test_id = 0
    for subject, n in common.progress(frames, quiet, desc="demo"):
        if n == 1:
            center, texture = rng.uniform([0.35, 0.3], [0.65, 0.7]), rng.uniform(0, 1, 1)
        image, mask = demo_frame(rng, h, w, center, texture, rng.random() < 0.4)
        if subject <= n_subjects:
            write_tiff(raw / "train" / f"{subject}_{n}.tif", image)
            write_tiff(raw / "train" / f"{subject}_{n}_mask.tif", mask * 255)
        else:
            test_id += 1
            write_tiff(raw / "test" / f"{test_id}.tif", image)
            write_tiff(raw / "test_masks" / f"{test_id}_mask.tif", mask * 255)


# ---------------------------------------------------------------- main

def main():
    args = get_args()
    common.setup_logging(args)
    raw, work = args.raw, args.workdir
    if args.images or args.dsb:
        return layouts.convert(args)
    if args.demo:
        make_demo(raw, *args.demo_size, args.demo_subjects, args.seed, args.quiet)
    if args.download:
        download(args.competition, raw, args.quiet)
    if not raw.is_dir() and common.in_kaggle_notebook():
        raise UserError(f"no competition files in {common.kaggle_input_root()} ({raw} not found): add the "
                        f"competition's data to the notebook (Add Input > Competitions > {args.competition})")
    if not raw.is_dir():
        raise UserError(f"{raw} not found: create it and put the competition files there, "
                        f"or run `python data.py --download` or `--demo`")
    raw = unpack_zips(raw, work)

    images, masks, subjects = list_train(raw / "train", args.skip_unpaired)
    tests, ids = list_test(raw / "test")
    # All outputs appear together, only once every file decoded: no half-converted workdir.
    with contextlib.ExitStack() as outputs:
        out = {name: outputs.enter_context(common.atomic_path(work / f"{name}.npy"))
               for name in ("imgs_train", "imgs_mask_train", "imgs_subject_train", "imgs_test", "imgs_id_test")}
        decode_into(out["imgs_train"], images, False, args.workers, args.quiet, "train images")
        decode_into(out["imgs_mask_train"], masks, True, args.workers, args.quiet, "train masks", images)
        decode_into(out["imgs_test"], tests, False, args.workers, args.quiet, "test images")
        np.save(out["imgs_subject_train"], subjects)
        np.save(out["imgs_id_test"], ids)
    layouts.write_competition_info(work)
    log.info(f"{len(images)} training images of {len(set(subjects.tolist()))} subjects, "
             f"{len(tests)} test images -> {work}")


if __name__ == "__main__":
    common.run(main)
