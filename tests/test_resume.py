"""Interrupted training: SIGKILL and SIGTERM mid-run, then --resume, end where an uninterrupted
run with the same seed ends; a time limit ends the run cleanly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_script

TINY = [
    "--image-size", 32, 48, "--width", 4, "--depth", 2, "--folds", 3, "--epochs", 6, "--batch-size",
    8, "-q"
]


def train_args(work, *extra):
    return [str(a) for a in ["--workdir", work, *TINY, *extra]]


def history_rows(work):
    path = work / "model/history_fold0.csv"
    return path.read_bytes().count(b"\n") - 1 if path.exists() else 0


def interrupt(work, sig, after_rows, *extra):
    """Start train.py, send `sig` once the history holds `after_rows` epochs; its result."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KAGGLE_KERNEL_RUN_TYPE", None)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *train_args(work, *extra)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while process.poll() is None and history_rows(work) < after_rows and time.time() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, ("train.py ended before it could be interrupted:\n" +
                                    process.communicate()[1])
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def copy_arrays(source, work):
    """The demo's arrays only: other tests train in the shared demo folder."""
    work.mkdir(parents=True)
    for path in source.glob("*.npy"):
        shutil.copy(path, work)


def weights(work):
    import keras

    model = keras.models.load_model(work / "model/fold0.keras", compile=False)
    return [np.asarray(w, np.float64) for w in model.weights]


@pytest.fixture(scope="module")
def uninterrupted(demo, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted") / "work"
    copy_arrays(demo[1], work)
    run_script("train.py", *train_args(work))
    return work


def test_killed_and_stopped_runs_resume_to_the_uninterrupted_result(uninterrupted, demo, tmp_path):
    work = tmp_path / "work"
    copy_arrays(demo[1], work)
    backup = work / "model/backup_fold0"

    # SIGKILL: no warning, no clean-up; only what was renamed into place survives.
    code, _, _ = interrupt(work, signal.SIGKILL, 2)
    assert code == -signal.SIGKILL
    state = json.loads((backup / "state.json").read_text())
    assert 1 <= state["epoch"] < 6 and not (work / "model/config.json").exists()

    # Resuming with another architecture is refused, and touches nothing.
    before = {p: p.read_bytes() for p in (work / "model").rglob("*") if p.is_file()}
    result = run_script("train.py", *train_args(work, "--resume", "--width", 8), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--width was 4 in the interrupted run, now 8" in result.stderr
    assert {p: p.read_bytes() for p in (work / "model").rglob("*") if p.is_file()} == before

    # Resumed, then SIGTERM: the current step ends, the complete epochs stay saved, one clear word.
    code, stdout, stderr = interrupt(work, signal.SIGTERM, 4, "--resume")
    assert code == 130 and "Traceback" not in stderr
    assert ("SIGTERM" in stdout and "--resume to continue" in stdout and
            stderr.strip() == "interrupted")
    assert json.loads((backup / "state.json").read_text())["epoch"] >= 3
    assert not (work / "model/config.json").exists()

    result = run_script("train.py", *[a for a in train_args(work, "--resume") if a != "-q"])
    assert "resuming after epoch" in result.stdout and "Traceback" not in result.stderr
    assert not backup.exists()  # the run is complete: nothing to resume

    # Same seed, same data order and augmentation by (seed, epoch, step), same RNG and optimizer
    # state:
    # on one CPU the same operations give the same bits, so the tolerance is only for a last-bit
    # difference should a kernel sum in another order (the weights are of order 1).
    for resumed, straight in zip(weights(work), weights(uninterrupted)):
        assert np.allclose(resumed, straight, rtol=0, atol=1e-5)
    history, expected_history = (pd.read_csv(w / "model/history_fold0.csv").drop(columns="seconds")
                                 for w in (work, uninterrupted))  # all but the wall-clock seconds
    pd.testing.assert_frame_equal(history, expected_history, check_exact=True)
    config, expected = (json.loads((w / "model/config.json").read_text())
                        for w in (work, uninterrupted))
    assert config["validation_dice"] == pytest.approx(expected["validation_dice"], abs=1e-6)


def test_time_limit_ends_the_run_cleanly(demo, tmp_path):
    work = tmp_path / "work"
    copy_arrays(demo[1], work)
    result = run_script("train.py", *train_args(work, "--epochs", 200, "--time-limit", 12))
    assert "Traceback" not in result.stderr
    assert json.loads((work / "model/config.json").read_text())["folds"] == ["fold0.keras"]
    assert 1 <= history_rows(work) < 200
    assert not (work / "model/backup_fold0").exists()
    assert not [p.name for p in (work / "model").iterdir() if p.name.startswith(".")
                ]  # no temporaries left


def test_resume_trains_the_folds_the_budget_chose_for_the_interrupted_run(tmp_path):
    """Under a time limit the budget chooses the folds; --resume must not choose anew (its
    size is not planned anew either, so there is no plan to choose from)."""
    import argparse

    import train
    backup = tmp_path / "model" / "backup_fold1"
    backup.mkdir(parents=True)
    options = {"--budget-folds": 3, "--input-size": [32, 48]}
    (backup / "state.json").write_text(json.dumps({"options": options}))
    args = argparse.Namespace(fold=None, resume=True, plan=None, folds=5, workdir=tmp_path)
    assert train.folds_to_train(args, None) == [0, 1, 2]
    assert train.interrupted_option(args, "--input-size") == [32, 48]
    args.resume = False
    assert train.folds_to_train(args, None) == [0]  # afresh, no plan: fold 0
    with pytest.raises(train.UserError, match="pass --resume"):
        train.folds_to_train(args, [1])  # --fold 1 was interrupted
