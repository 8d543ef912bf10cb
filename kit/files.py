"""Errors the user can fix, where the files are, writes that never leave half a file, and
zips unpacked without surprises."""

import contextlib
import errno
import fcntl
import glob
import json
import logging
import os
import re
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

# A temporary's name: its final name, the pid of the run writing it (so that only a dead run's
# are ever removed), mkstemp's 8 random characters, and .tmp plus the final suffixes.
TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp")
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)  # what a disk (or a quota) with no room says


def temporary(final, folder=False):
    """A new, empty temporary file (or folder) beside `final`, named for it and this run."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.{os.getpid()}."
    umask = os.umask(0)
    os.umask(umask)
    if folder:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's are private: the final folder is not
        return Path(tmp)
    # The temporary name keeps every suffix: Keras insists on ".weights.h5" and ".keras".
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp" + "".join(final.suffixes),
                               dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def final_path(path):
    """The path a temporary stands for (the one to name in messages), else `path` itself."""
    match = TEMPORARY.match(Path(path).name)
    return Path(path).with_name(match["name"]) if match else Path(path)


def alive(pid):
    """Whether a process of this pid runs (a reused pid too: then a temporary is kept too long,
    never removed too soon)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def writer_of(path):
    """The pid of the run writing the temporary `path`, or None where it is no temporary."""
    match = TEMPORARY.match(Path(path).name)
    return int(match["pid"]) if match else None


def dead_temporary(path):
    """Whether `path` is a temporary of a run that no longer runs: safe to remove."""
    pid = writer_of(path)
    return pid is not None and not alive(pid)


def remove(path):
    """Remove a file or a folder, if there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only on success. A full disk
    or another failure of the write names `path`, never the temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):  # a killed run's
        if dead_temporary(stale):
            remove(stale)
    tmp = temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if not e.filename or Path(e.filename) == tmp:  # a failed write often names no file
            e.filename = str(path)
        raise
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


# ---------------------------------------------------------------- one run per workdir

LOCK = ".lock"


@contextlib.contextmanager
def workdir_lock(work, step):
    """Hold the workdir for one run of a step (step: the script's name, said to a second run).
    A second run on a held workdir is refused in one line naming the first one's pid. The lock
    is flock's on <work>/.lock: the kernel releases it when its process ends, however it ends,
    so a killed run's lock is taken over by the next run, which first finishes or clears what
    the killed one left (recover). A workdir that does not exist is made (and removed again if
    the run leaves it empty); one this run cannot write to is not locked: it cannot change."""
    work = Path(work)
    made = not work.exists()
    if made:
        work.mkdir(parents=True, exist_ok=True)
    if not os.access(work, os.W_OK):
        yield
        return
    fd = take_lock(work, step)
    try:
        recover(work)
        yield
    finally:
        (work / LOCK).unlink(missing_ok=True)  # before the lock goes: see take_lock
        os.close(fd)
        if made and not any(work.iterdir()):
            with contextlib.suppress(OSError):  # another run may have begun in it meanwhile
                work.rmdir()


def take_lock(work, step):
    """The open, locked <work>/.lock, holding this run's pid and step."""
    path = work / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            who = f"{holder[1]}, pid {holder[0]}" if len(holder) == 2 else "starting"
            raise UserError(f"{work} is in use by another run ({who}): wait for it to end, "
                            f"or give another --workdir") from None
        # A run that ends unlinks the file before its lock goes: locked, it may be that file.
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    left = os.read(fd, 200).decode(errors="replace").split()
    if len(left) == 2:  # only a run that never reached its end leaves its pid behind
        log.info(f"{work}: taking over from {left[1]} (pid {left[0]}), which did not finish "
                 f"(killed or crashed)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {step}\n".encode(), 0)
    return fd


def recover(work):
    """What a killed run left in the workdir: the renames of a set it committed are finished,
    the temporaries of one it had not committed removed."""
    step = finish_commit(work)
    if step:
        log.info(f"{work}: finished committing the outputs of an interrupted `{step}`")
    for path in sorted(Path(work).rglob(".*.tmp*")):
        if dead_temporary(path):
            remove(path)


# ---------------------------------------------------------------- a step's outputs, one set

JOURNAL = ".commit.json"


class OutputSet:
    """The outputs of one run of a step, committed together. Each is written under a temporary
    name beside its final one (stage); files made elsewhere are moved in (adopt), and those the
    new set no longer holds are listed for removal (remove). The commit writes one journal of
    all these renames and removals, atomically: the commit point. Then it does them; should a
    kill cut them short, the next step on the workdir finishes them before it reads anything
    (recover). So any step finds the old set or the whole new one, never a mixture."""

    def __init__(self, work, step):
        self.work, self.step = Path(work), step
        self.moves, self.removals, self.superseded = {}, [], []

    def stage(self, final, folder=False):
        """A new temporary file (or folder) that becomes `final` at the commit."""
        final = Path(final)
        if final in self.moves:  # staged again (data.py dropping frames): the first one goes
            self.superseded.append(self.moves[final])
        self.moves[final] = temporary(final, folder)
        return self.moves[final]

    def adopt(self, source, final):
        """`source`, written elsewhere, becomes `final` at the commit; where there is no source,
        the new set has no `final`."""
        if not Path(source).exists():
            return self.remove(final)
        self.moves[Path(final)] = Path(source)

    def remove(self, path):
        self.removals.append(Path(path))

    def path(self, final):
        """Where the set's `final` lies now: its staged file, or the one already there; None
        where the new set has none."""
        final = Path(final)
        return None if final in self.removals else self.moves.get(final, final)

    def commit(self):
        def relative(path):  # valid however the next run names the workdir
            return os.path.relpath(path, self.work)

        journal = {"step": self.step,
                   "moves": [[relative(s), relative(f)] for f, s in self.moves.items()],
                   "remove": [relative(p) for p in self.removals]}
        try:
            write_text(self.work / JOURNAL, json.dumps(journal, indent=1))
        except BaseException:
            self.discard()
            raise
        finish_commit(self.work)
        for path in self.superseded:
            remove(path)

    def discard(self):
        """The staged temporaries go: the old set stays as it was."""
        for path in [*self.superseded, *self.moves.values()]:
            if writer_of(path) == os.getpid():
                remove(path)


@contextlib.contextmanager
def output_set(work, step):
    """An OutputSet committed when the block ends, discarded if it fails."""
    outputs = OutputSet(work, step)
    try:
        yield outputs
    except BaseException as e:
        outputs.discard()
        if isinstance(e, OSError) and e.errno in FULL_DISK and not e.filename:
            e.filename = str(work)  # a write of np.save or a library says no more than that
        raise
    outputs.commit()


def finish_commit(work):
    """Do the renames and removals of the journal in `work` (those still to do: each is done
    once), then drop it. Returns the step that wrote it, or None where there is none."""
    path = Path(work) / JOURNAL
    if not path.exists():
        return None
    try:
        journal = json.loads(path.read_text())
        moves, removals, step = journal["moves"], journal["remove"], journal["step"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is damaged ({e}): delete it, and run the step that was "
                        f"writing into {work} again") from None
    for source, final in moves:
        move_into_place(Path(work) / source, Path(work) / final)
    for removed in removals:
        remove(Path(work) / removed)
    path.unlink()
    return step


def move_into_place(source, final):
    """Rename source to final; a folder replaces the old one whole, which is set aside under a
    fixed name first, so that a repeat after a kill at any point ends the same."""
    aside = final.with_name(f".{final.name}.replaced")
    if source.is_dir():
        if final.exists():
            remove(aside)
            os.replace(final, aside)
        os.replace(source, final)
    elif source.exists():
        os.replace(source, final)
    remove(aside)


# ---------------------------------------------------------------- a full disk

SLACK = 2**20  # the small files beside the large ones (journal, records)
NO_SPACE = "free some disk space, or use a --workdir on another disk"


def megabytes(n):
    return f"{n / 2**20:,.1f} MB"


def check_free_space(folder, nbytes, what, fix=NO_SPACE):
    """Refuse outputs the disk has no room for before any of them is written (the old set
    stays until the new one is complete: it needs room of its own)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if nbytes + SLACK > free:
        raise UserError(f"{what} need {megabytes(nbytes + SLACK)} but {folder} has "
                        f"{megabytes(free)} free: {fix}")


def reserve(path, nbytes):
    """Allocate a new file's blocks before it is written through a memory map: writing a page
    the disk has no room for kills the process with SIGBUS ("Bus error"), an error here."""
    if not hasattr(os, "posix_fallocate"):  # macOS: the free-space check alone
        return
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, nbytes)
    except OSError as e:
        if e.errno in FULL_DISK:
            raise UserError(f"{final_path(path)}: no space left on device for its "
                            f"{megabytes(nbytes)}: {NO_SPACE}") from None
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # filesystems without it
            raise


def new_array(path, dtype, shape):
    """A new .npy file of this shape, memory-mapped for writing, its blocks allocated first."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    reserve(path, os.path.getsize(path))
    return array


@contextlib.contextmanager
def disk_errors(path):
    """A full disk as libraries that write files their own way report it (h5py: a RuntimeError
    quoting errno 28) becomes the OSError ENOSPC it is, naming `path` (see cli.explain)."""
    try:
        yield
    except Exception as e:
        full = (isinstance(e, OSError) and e.errno in FULL_DISK or
                "No space left" in str(e) or "errno = 28" in str(e))
        if not full:
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final_path(path))) from None


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
