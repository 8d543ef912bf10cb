"""Errors the user can fix, where the files are, writes that never leave half a file, and
zips unpacked without surprises."""

import contextlib
import glob
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

COMPETITION = "ultrasound-nerve-segmentation"
MAX_UNZIPPED_BYTES = 64 * 2**30  # the real competition unzips to about 2 GB
MAX_ZIP_RATIO = 200  # TIFFs compress a few times, zip bombs a million times
log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem the user can fix: printed as one line, without a traceback."""


# ---------------------------------------------------------------- where the files are


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
    found = [
        t.parent for pattern in ("*/train", "*/*/train", "*/*/*/train")
        for t in sorted(root.glob(pattern))
    ]
    for candidate in named + found:
        if has_train_test(candidate):
            return candidate
    return next((c for c in named if c.is_dir()), None)


def default_raw():
    if in_kaggle_notebook():  # where the competition is, or where it would be once attached
        return find_competition_input() or kaggle_input_root() / COMPETITION
    return Path("raw")


def default_workdir():
    return kaggle_working_root() if in_kaggle_notebook() else Path("work")


def has_train_test(folder):
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def writable(folder):
    """False for a Kaggle notebook's input (mounted read-only), and any folder we may not write."""
    inside_input = folder.resolve().is_relative_to(kaggle_input_root().resolve())
    return os.access(folder, os.W_OK) and not inside_input


# ---------------------------------------------------------------- safe writes


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):  # a killed run's
        stale.unlink(missing_ok=True)
    # The temporary name keeps every suffix: Keras insists on ".weights.h5" and ".keras".
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes),
                               dir=path.parent)
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


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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
        ratio = info.file_size / info.compress_size if info.compress_size else 0
        if ratio > MAX_ZIP_RATIO and info.file_size > 2**20:
            raise UserError(f"{archive.filename}: member {info.filename!r} expands {ratio:.0f}x; "
                            f"refusing a likely zip bomb")
    if total > MAX_UNZIPPED_BYTES:
        raise UserError(
            f"{archive.filename} would unzip to {total / 2**30:.0f} GiB; refusing a likely zip bomb"
        )


def extract(zip_path, dest):
    try:
        with zipfile.ZipFile(zip_path) as archive:
            check_members(archive, dest)
            archive.extractall(dest)
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise UserError(f"{zip_path} is corrupt or truncated ({e}): download it again") from None


def unpack_zips(raw, work):
    """Extract competition zips found in raw/ (outer zip, nested train.zip/test.zip/*.csv.zip)
    and return the folder holding train/ and test/: raw/ itself, or <workdir>/raw when raw/ is
    read-only."""
    zips = sorted(raw.glob("*.zip"))
    if has_train_test(raw) or not zips:
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
