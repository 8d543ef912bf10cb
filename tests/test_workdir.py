"""One run per workdir: a second run is refused, a killed run's lock taken over, and only the
temporaries of runs no longer running removed (kit/files.py: workdir_lock)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT, run_script
from test_data import make_competition
from test_errors import assert_refused, snapshot

from kit import files

TINY = ["--image-size", 32, 48, "--width", 4, "--depth", 2, "--folds", 3, "--epochs", 1,
        "--batch-size", 8, "-q"]


def hidden(folder):
    return sorted(p.name for p in folder.rglob(".*"))


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def script_env():
    return {k: v for k, v in os.environ.items() if k != "KAGGLE_KERNEL_RUN_TYPE"}


# ---------------------------------------------------------------- one run per workdir


def start_holding(work, *args):
    """data.py started, and stopped (SIGSTOP) once it holds the workdir's lock and is writing."""
    process = subprocess.Popen([sys.executable, str(ROOT / "data.py"), *map(str, args)],
                               cwd=ROOT, env=script_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(work.glob(".imgs_train.npy.*.tmp*")) and time.time() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.002)
    process.send_signal(signal.SIGSTOP)
    return process


def test_a_busy_workdir_is_refused_to_every_step_naming_the_run_that_holds_it(tmp_path):
    work, raw = tmp_path / "work", tmp_path / "demo"
    first = start_holding(work, "--demo", "--demo-subjects", 3, "--raw", raw, "--workdir", work,
                          "-q")
    try:
        assert (work / ".lock").read_text().split() == [str(first.pid), "data.py"]
        other = make_competition(tmp_path / "other")
        before = snapshot(work)
        for script, extra in (("data.py", ["--raw", other]), ("train.py", TINY),
                              ("predict.py", []), ("submission.py", []),
                              ("visualize.py", ["--no-show"])):
            result = run_script(script, "--workdir", work, *extra, check=False)
            assert_refused(result, [f"{work} is in use by another run (data.py, pid {first.pid})",
                                    "wait for it to end, or give another --workdir"])
        assert snapshot(work) == before  # nothing of the first run's was touched
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(120) == 0, first.communicate()
    assert len(np.load(work / "imgs_id_test.npy")) == len(list((raw / "test").glob("*.tif")))
    assert hidden(work) == []  # no lock, no temporary left


def test_a_killed_runs_lock_is_taken_over_and_its_temporaries_removed(tmp_path):
    work = tmp_path / "work"
    killed = start_holding(work, "--demo", "--demo-subjects", 3, "--raw", tmp_path / "demo",
                           "--workdir", work, "-q")
    killed.kill()
    killed.wait()
    assert ".lock" in hidden(work) and any(".tmp" in name for name in hidden(work))
    result = run_script("data.py", "--raw", make_competition(tmp_path / "raw"), "--workdir", work)
    assert f"taking over from data.py (pid {killed.pid}), which did not finish" in result.stdout
    assert hidden(work) == []
    assert np.load(work / "imgs_id_test.npy").tolist() == [1, 2, 3]  # the second run's set


def test_only_the_temporaries_of_runs_no_longer_running_are_removed(tmp_path):
    from kit import callbacks

    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "backup_fold0"
        folder.mkdir()
        live = folder / f".state.json.{running.pid}.abcdefgh.tmp.json"
        dead = folder / f".state.json.{dead_pid()}.abcdefgh.tmp.json"
        kept = [live, folder / "history_fold0.csv", folder / "fold0.keras"]
        for path in [*kept, dead, folder / "epoch1.weights.h5"]:
            path.write_text("x")
        run = {"recipe": {}, "data": {}, "plan": {}}
        callbacks.TrainingState(folder, run, 15).save(weights=None)  # atomic_path, then its own
        assert sorted(folder.iterdir()) == sorted([*kept, folder / "state.json"])
        # The next run's recovery: the same rule everywhere under the workdir.
        nested_dead = folder / f".x.npy.{dead_pid()}.abcdefgh.tmp.npy"
        nested_dead.write_text("x")
        files.recover(tmp_path)
        assert live.exists() and not nested_dead.exists()
    finally:
        running.kill()
        running.wait()
