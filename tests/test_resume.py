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
    """Epochs in fold 0's history: in its backup folder while it trains, then in model/."""
    for path in (work / "model/backup_fold0/history_fold0.csv", work / "model/history_fold0.csv"):
        if path.exists():
            return path.read_bytes().count(b"\n") - 1
    return 0


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

    # Resuming with another architecture is refused, and touches nothing but the temporaries the
    # killed run left (the next run on the workdir clears them).
    def saved():
        return {p: p.read_bytes() for p in (work / "model").rglob("*") if p.is_file()}

    before = {p: data for p, data in saved().items() if not p.name.startswith(".")}
    result = run_script("train.py", *train_args(work, "--resume", "--width", 8), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--width was 4 in the interrupted run, now 8" in result.stderr
    assert saved() == before

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


def test_resume_trains_the_folds_and_size_the_budget_chose_for_the_interrupted_run(tmp_path):
    """Under a time limit the budget chooses the size and the folds; --resume must not choose
    anew, and times no step."""

    from kit import budget, dataset
    from kit.recipe import Options, Plan, Recipe

    masks = np.zeros((6, 64, 96), np.uint8)
    masks[:, 20:40, 30:60] = 1
    frames = dataset.Frames(masks * 100, masks, np.arange(6), np.tile((64, 96), (6, 1)), False, 1)
    saved = Plan(size=(32, 48), classes=1, channels=1, loss="bce_dice", class_weights=None,
                 precision="float32", folds=(0, 1, 2), epochs=None, patience=None,
                 sizing={"objects_size": [32, 48]})

    def timer(size, plan):
        raise AssertionError("a resumed run times no step")

    recipe, resumed = Recipe(folds=5), Options(workdir=tmp_path, time_limit=600, resume=True)
    plan = budget.plan_run(recipe, resumed, frames, "float32", timer, 1.0, saved)
    assert plan.folds == (0, 1, 2) and plan.size == (32, 48) and plan.epochs is None
    assert plan.train_until == budget.TRAINING_SHARE * 600
    named = Options(workdir=tmp_path, time_limit=600, resume=True, fold="4")
    assert budget.plan_run(recipe, named, frames, "float32", timer, 1.0, saved).folds == (4,)
    afresh = budget.plan_run(recipe, Options(workdir=tmp_path), frames, "float32", timer, 0)
    assert afresh.folds == (0,) and afresh.epochs == 60 and afresh.patience == 15  # no limit


def test_a_run_afresh_over_an_interrupted_one_is_refused(tmp_path):
    import dataclasses

    from kit import callbacks, training
    from kit.files import UserError
    from kit.recipe import Options, Plan, Recipe

    plan = Plan(size=(32, 48), classes=1, channels=1, loss="bce_dice", class_weights=None,
                precision="float32", folds=(1,), epochs=2, patience=15)
    data = {"frames": 10, "shape": [64, 96], "classes": 1, "checksum": 1}
    recipe = Recipe(epochs=2)
    run = {"recipe": dataclasses.asdict(recipe), "data": data, "plan": plan.to_dict()}
    callbacks.TrainingState(tmp_path / "model" / "backup_fold1", run, 15).save()
    with pytest.raises(UserError, match="holds an interrupted run: pass --resume"):
        training.interrupted_plan(recipe, Options(workdir=tmp_path), data)
    resumed = training.interrupted_plan(recipe, Options(workdir=tmp_path, resume=True), data)
    assert resumed == plan
    with pytest.raises(UserError, match="--epochs was 2 in the interrupted run, now 3"):
        training.interrupted_plan(Recipe(epochs=3), Options(workdir=tmp_path, resume=True), data)
