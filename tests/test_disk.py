"""A full disk: the free space checked against the outputs' size before anything is written, and
a disk that fills while a step writes (memory-mapped arrays: SIGBUS otherwise) said in one line,
with the previous outputs intact and no temporary left behind."""

import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, run_script
from test_data import make_competition
from test_errors import assert_refused, snapshot

from kit import files
from kit.files import UserError

# Runs a script with the free-space check gone: the disk fills after it was checked.
UNCHECKED = """
import runpy, sys
from kit import files
files.check_free_space = lambda *args, **kwargs: None  # before any module imports it by name
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
# Fills a memory-mapped array on a small disk, with its blocks reserved first or (unreserved) not.
FILL = """
import sys
import numpy as np
from kit import cli, files
if sys.argv[2] == "unreserved":
    files.reserve = lambda path, nbytes: None
def fill():
    array = files.new_array(sys.argv[1], np.uint8, (4 * 2**20,))
    array[:] = 1
    array.flush()
cli.run(fill)
"""


def free(megabytes):
    """A stand-in for shutil.disk_usage: this much free."""
    return lambda path: SimpleNamespace(total=2**40, used=0, free=int(megabytes * 2**20))


def test_the_free_space_check(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "disk_usage", free(10))
    with pytest.raises(UserError) as refused:
        files.check_free_space(tmp_path / "not" / "yet", 20 * 2**20, "data.py's arrays")
    assert str(refused.value) == (f"data.py's arrays need 21.0 MB but {tmp_path} has 10.0 MB "
                                  f"free: free some disk space, or use a --workdir on another disk")
    files.check_free_space(tmp_path, 8 * 2**20, "data.py's arrays")  # fits, with room to spare


@pytest.mark.slow
def test_data_py_refuses_arrays_the_disk_has_no_room_for(monkeypatch, tmp_path):
    import data

    raw, work = make_competition(tmp_path / "raw", h=200, w=300), tmp_path / "work"
    run_script("data.py", "--raw", make_competition(tmp_path / "old"), "--workdir", work, "-q")
    before = snapshot(work)
    monkeypatch.setattr(shutil, "disk_usage", free(1.5))
    with pytest.raises(UserError, match=f"data.py's arrays need 1.9 MB but {work} has 1.5 MB "
                       f"free: free some disk space"):  # 0.9 MB, and room for the small files
        data.main(["--raw", str(raw), "--workdir", str(work), "-q"])
    assert snapshot(work) == before


# ---------------------------------------------------------------- on a small filesystem


class Disk:
    """A tmpfs whose free space a test sets (root, and a mount command that works, only)."""

    def __init__(self, path):
        self.path = path

    def leave_free(self, nbytes):
        used = shutil.disk_usage(self.path).used
        size = -(-(used + nbytes) // 4096) * 4  # kB, whole pages
        subprocess.run(["mount", "-o", f"remount,size={size}k", "tmpfs", str(self.path)],
                       check=True, capture_output=True)

    def leftovers(self):
        return sorted(p.name for p in self.path.rglob(".*"))


@pytest.fixture
def small_disk(tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                             capture_output=True, text=True) if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("no small filesystem can be mounted here (needs root and mount)")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_memory_mapped_write_to_a_full_disk_is_one_line_not_a_bus_error(small_disk):
    small_disk.leave_free(2**20)
    array = small_disk.path / "x.npy"
    run = [sys.executable, "-c", FILL, str(array)]
    reserved = subprocess.run([*run, "reserved"], cwd=ROOT, capture_output=True, text=True)
    assert_refused(reserved, [f"{array}: no space left on device for its 4.0 MB",
                              "free some disk space"])
    array.unlink()
    unreserved = subprocess.run([*run, "unreserved"], cwd=ROOT, capture_output=True, text=True)
    assert unreserved.returncode == -signal.SIGBUS  # what reserving the blocks first prevents


@pytest.mark.slow
def test_data_py_on_a_small_disk(small_disk, tmp_path):
    raw = make_competition(tmp_path / "raw", h=100, w=120)
    work = small_disk.path / "work"
    run_script("data.py", "--raw", make_competition(tmp_path / "old"), "--workdir", work, "-q")
    before = snapshot(work)
    small_disk.leave_free(512 * 2**10)
    result = run_script("data.py", "--raw", raw, "--workdir", work, check=False)
    assert_refused(result, ["data.py's arrays need 1.2 MB but", "free some disk space"])
    small_disk.leave_free(64 * 2**10)  # the disk fills once checked
    result = subprocess.run([sys.executable, "-c", UNCHECKED, str(ROOT / "data.py"), "--raw",
                             str(raw), "--workdir", str(work), "-q"], cwd=ROOT,
                            capture_output=True, text=True)
    assert_refused(result, [f"{work}/imgs_train.npy: no space left on device",
                            "free some disk space"])
    assert snapshot(work) == before and small_disk.leftovers() == []


def test_predict_py_on_a_small_disk(small_disk, trained_demo):
    work = small_disk.path / "work"
    shutil.copytree(trained_demo[1], work)
    before = snapshot(work)
    small_disk.leave_free(600 * 2**10)  # the masks: 0.4 MB
    result = run_script("predict.py", "--workdir", work, check=False)
    assert_refused(result, ["the test masks need 1.4 MB but", "free some disk space"])
    small_disk.leave_free(128 * 2**10)
    result = subprocess.run([sys.executable, "-c", UNCHECKED, str(ROOT / "predict.py"),
                             "--workdir", str(work), "-q"], cwd=ROOT, capture_output=True,
                            text=True)
    assert_refused(result, [f"{work}/imgs_mask_test.npy: no space left on device",
                            "free some disk space"])
    assert snapshot(work) == before and small_disk.leftovers() == []


def test_train_py_on_a_small_disk(small_disk, demo):
    work = small_disk.path / "work"
    work.mkdir()
    for path in demo[1].glob("*.npy"):
        shutil.copy(path, work)
    small_disk.leave_free(256 * 2**10)
    flags = ["--workdir", work, "--image-size", 32, 48, "--width", 4, "--depth", 2, "--folds", 3,
             "--epochs", 1, "--batch-size", 8, "-q"]
    result = run_script("train.py", *flags, check=False)
    assert_refused(result, ["backup_fold0", "free some disk space, then run the same command "
                            "with --resume"])
    # The disk fills once checked: h5py's own error (a RuntimeError quoting errno 28) is said as
    # the full disk it is.
    result = subprocess.run([sys.executable, "-c", UNCHECKED, str(ROOT / "train.py"),
                             *map(str, flags)], cwd=ROOT, capture_output=True, text=True)
    assert_refused(result, [f"{work}/model/backup_fold0/best1.weights.h5: No space left on "
                            f"device", "free some disk space"])
    assert small_disk.leftovers() == []
    assert not (work / "model/config.json").exists()
