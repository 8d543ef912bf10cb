"""One run per workdir, each step's outputs committed as one set, outputs made from other inputs
refused, and a new CSV checked before it replaces the old one (kit/files.py: workdir_lock,
OutputSet; kit/arrays.py: fingerprint)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_script
from folder_sets import write_pairs
from test_data import make_competition
from test_errors import assert_refused, snapshot

from kit import arrays, files

TINY = ["--image-size", 32, 48, "--width", 4, "--depth", 2, "--folds", 3, "--epochs", 1,
        "--batch-size", 8, "-q"]
# Run a script as a user would, but die as SIGKILL would (no clean-up) at the k-th os.replace.
KILLED_AT = """
import os, runpy, sys
k, script = int(sys.argv[1]), sys.argv[2]
replace, calls = os.replace, [0]
def killing_replace(*args, **kwargs):
    calls[0] += 1
    if calls[0] == k:
        os._exit(137)
    return replace(*args, **kwargs)
os.replace = killing_replace
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def hidden(folder):
    return sorted(p.name for p in folder.rglob(".*"))


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def fail_at(monkeypatch, k):
    """os.replace raises KeyboardInterrupt (a Ctrl-C) at its k-th call from now."""
    replace, calls = os.replace, [0]

    def interrupted_replace(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            raise KeyboardInterrupt
        return replace(*args, **kwargs)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    return calls


def killed_at(monkeypatch, k, work, step):
    """Run step() with a Ctrl-C at its k-th rename, then what the next step does first on work;
    returns how many renames step() asked for (fewer than k: it ran to its end)."""
    calls = fail_at(monkeypatch, k)
    try:
        step()
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    next_step_recovers(work)
    return calls[0]


def next_step_recovers(work):
    """What each step does first on a workdir: take its lock, finishing or clearing what a
    killed run left."""
    with files.workdir_lock(work, "test"):
        pass


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------- one set: the commit itself


def old_set(work):
    work.mkdir()
    (work / "a.txt").write_text("old a")
    (work / "b.txt").write_text("old b")
    (work / "folder").mkdir()
    (work / "folder/1.png").write_text("old 1")
    (work / "gone.txt").write_text("old gone")
    (work / "made").mkdir()
    (work / "made/c.txt").write_text("new c")  # made elsewhere, adopted into the set


def new_set(out):
    out.stage(out.work / "a.txt").write_text("new a")
    out.stage(out.work / "b.txt").write_text("new b")
    (out.stage(out.work / "folder", folder=True) / "2.png").write_text("new 2")
    out.adopt(out.work / "made/c.txt", out.work / "c.txt")
    out.remove(out.work / "gone.txt")


def write_new_set(work):
    with files.output_set(work, "test") as out:
        new_set(out)


def the_set(work):
    return {p.relative_to(work).as_posix(): p.read_text() for p in sorted(work.rglob("*"))
            if p.is_file() and not p.relative_to(work).as_posix().startswith("made/")}


def test_a_set_is_committed_whole_or_not_at_all_wherever_a_kill_falls(tmp_path, monkeypatch):
    old, new = tmp_path / "old", tmp_path / "new"
    old_set(old)
    shutil.copytree(old, new)
    write_new_set(new)
    seen, k = set(), 0
    while True:
        k += 1
        work = tmp_path / f"killed{k}"
        shutil.copytree(old, work)
        renames = killed_at(monkeypatch, k, work, lambda: write_new_set(work))
        assert the_set(work) in (the_set(old), the_set(new)), k
        assert hidden(work) == []
        seen.add("old" if the_set(work) == the_set(old) else "new")
        if renames < k:  # the commit made fewer renames: every point was tried
            break
    assert seen == {"old", "new"} and k > 5


# ---------------------------------------------------------------- data.py


def data_set(work):
    return {p.name: p.read_bytes() for p in work.iterdir() if p.is_file() and p.name[0] != "."}


@pytest.fixture(scope="module")
def two_data_sets(tmp_path_factory):
    """A workdir of a folder layout with mixed sizes and test masks kept (arrays the next set
    lacks), and the competition's raw folder whose set replaces it."""
    base = tmp_path_factory.mktemp("data-sets")
    write_pairs(base / "img", base / "msk", [(20, 28), (16, 20), (20, 28), (12, 28)])
    old = base / "old"
    run_script("data.py", "--images", base / "img", "--masks", base / "msk", "--holdout", 1,
               "--workdir", old, "-q")
    raw = make_competition(base / "raw", test_ids=(5, 6, 7, 8, 9))
    new = base / "new"
    shutil.copytree(old, new)
    run_script("data.py", "--raw", raw, "--workdir", new, "-q")
    return old, new, raw


@pytest.mark.slow
def test_data_py_killed_at_any_rename_leaves_the_old_arrays_or_the_whole_new_set(two_data_sets,
                                                                                  tmp_path):
    old, new, raw = two_data_sets
    assert {"imgs_truth_test.npy", "imgs_size_train.npy"} <= set(data_set(old)) - set(data_set(new))
    seen, k = [], 0
    while True:
        k += 1
        work = tmp_path / f"killed{k}"
        shutil.copytree(old, work)
        killed = subprocess.run([sys.executable, "-c", KILLED_AT, str(k), str(ROOT / "data.py"),
                                 "--raw", str(raw), "--workdir", str(work), "-q"], cwd=ROOT,
                                env=script_env(), capture_output=True, text=True, timeout=120)
        assert killed.returncode in (0, 137), killed.stderr
        next_step_recovers(work)
        assert data_set(work) in (data_set(old), data_set(new)), k
        assert hidden(work) == []
        seen.append("old" if data_set(work) == data_set(old) else "new")
        if killed.returncode == 0:
            break
    assert seen[0] == "old" and seen[-2:] == ["new", "new"] and k > 6
    # The next step reads the set left after a kill between two of the renames.
    middle = tmp_path / f"killed{k // 2}"
    run_script("train.py", "--workdir", middle, *TINY)


# ---------------------------------------------------------------- predict.py


@pytest.fixture(scope="module")
def predicted(trained_demo, tmp_path_factory):
    """A workdir with a model, masks predicted from its test set, then another test set of the
    same count."""
    work = tmp_path_factory.mktemp("predicted") / "work"
    shutil.copytree(trained_demo[1], work)
    (work / "submission.csv").unlink(missing_ok=True)
    test, ids = np.load(work / "imgs_test.npy"), np.load(work / "imgs_id_test.npy")
    np.save(work / "imgs_test.npy", test[::-1])
    np.save(work / "imgs_id_test.npy", ids[::-1] + 500)
    return work


def predict_set(work):
    names = ["imgs_mask_test.npy", "imgs_mask_test.json"]
    outputs = {name: (work / name).read_bytes() for name in names}
    outputs.update({f"preview/{p.name}": p.read_bytes() for p in (work / "preview").iterdir()})
    return outputs


def predict_main(work):
    import predict

    predict.main(["--workdir", str(work), "--previews", "3", "-q"])


def test_predict_py_interrupted_at_any_rename_leaves_the_old_masks_or_the_whole_new_set(
        predicted, tmp_path, monkeypatch):
    import submission

    new = tmp_path / "new"
    shutil.copytree(predicted, new)
    predict_main(new)
    seen, k = [], 0
    while True:
        k += 1
        work = tmp_path / f"killed{k}"
        shutil.copytree(predicted, work)
        renames = killed_at(monkeypatch, k, work, lambda: predict_main(work))
        assert predict_set(work) in (predict_set(predicted), predict_set(new)), k
        assert hidden(work) == [] and (work / "report.html").exists()
        seen.append("old" if predict_set(work) == predict_set(predicted) else "new")
        # The next step: the old masks are of the test set before, and refused.
        if seen[-1] == "old":
            with pytest.raises(files.UserError, match="predicted from another test set"):
                submission.main(["--workdir", str(work), "--raw", str(work / "no-raw"), "-q"])
        else:
            submission.main(["--workdir", str(work), "--raw", str(work / "no-raw"), "-q"])
            assert (work / "submission.csv").read_text().count("\n") == 1 + len(np.load(
                work / "imgs_id_test.npy"))
        if renames < k:
            break
    assert "old" in seen and seen[-2:] == ["new", "new"] and k > 6


# ---------------------------------------------------------------- train.py


def model_set(work):
    folder = work / "model"
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name[0] != "."}


def test_train_py_killed_at_any_rename_of_its_commit_leaves_the_old_model_or_the_new_one(
        demo, tmp_path, monkeypatch):
    """train.py runs twice in process: the second time its commit is copied, workdir and all,
    just before it begins, so that a kill is tried at each of its renames on a copy."""
    import train

    work = tmp_path / "work"
    work.mkdir()
    for path in demo[1].glob("*.npy"):
        shutil.copy(path, work)
    flags = [str(a) for a in ["--workdir", work, *TINY]]
    train.main([*flags, "--fold", "0", "--seed", "1"])
    old = model_set(work)
    commits, real_commit = [], files.OutputSet.commit

    def copied_commit(out):
        shutil.copytree(work, tmp_path / "template")
        commits.append(out)
        real_commit(out)

    monkeypatch.setattr(files.OutputSet, "commit", copied_commit)
    train.main([*flags, "--fold", "all"])
    monkeypatch.undo()
    new, (out,) = model_set(work), commits
    assert set(new) - set(old) == {"fold1.keras", "fold2.keras", "history_fold1.csv",
                                   "history_fold2.csv"}

    seen, k = [], 0
    while True:
        k += 1
        copy = tmp_path / f"killed{k}"
        shutil.copytree(tmp_path / "template", copy)
        again = files.OutputSet(copy, "train.py")  # the same set, in the copy
        again.moves = {copy / f.relative_to(work): copy / s.relative_to(work)
                       for f, s in out.moves.items()}
        again.removals = [copy / p.relative_to(work) for p in out.removals]
        renames = killed_at(monkeypatch, k, copy, again.commit)
        assert model_set(copy) in (old, new), k
        seen.append("old" if model_set(copy) == old else "new")
        backups = sorted(p.name for p in (copy / "model").glob("backup_fold*"))
        assert backups == ([] if seen[-1] == "new" else ["backup_fold0", "backup_fold1",
                                                         "backup_fold2"])  # resumable
        assert hidden(copy) == []
        if renames < k:
            break
    assert seen[0] == "old" and seen[-2:] == ["new", "new"] and k > 8
    # The next step reads the model folder left after a kill between fold0.keras and config.json.
    middle = tmp_path / f"killed{k // 2}"
    predict_main(middle)
    config = json.loads((middle / "model/config.json").read_text())
    assert config["folds"] == ["fold0.keras", "fold1.keras", "fold2.keras"]
    assert config["data"] == arrays.training_fingerprint(np.load(work / "imgs_train.npy"),
                                                         np.load(work / "imgs_mask_train.npy"), 1)


# ---------------------------------------------------------------- outputs of other inputs


def other_ids(raw, copy, shift=100):
    """A copy of the demo competition whose test images carry other ids."""
    shutil.copytree(raw, copy)
    for path in sorted((copy / "test").glob("*.tif")):
        path.rename(path.with_name(f"{int(path.stem) + shift}.tif"))
    return copy


def test_masks_of_another_test_set_are_refused_until_predict_py_runs_again(trained_demo,
                                                                           tmp_path):
    raw, source, _ = trained_demo
    work = tmp_path / "work"
    shutil.copytree(source, work)
    run_script("submission.py", "--workdir", work, "--raw", raw, "-q")
    # data.py on a test set of the same count with other ids, predict.py skipped:
    run_script("data.py", "--raw", other_ids(raw, tmp_path / "raw"), "--workdir", work, "-q")
    before = snapshot(work)
    result = run_script("submission.py", "--workdir", work, "--raw", tmp_path / "raw",
                        check=False)
    assert_refused(result, [f"{work}/imgs_mask_test.npy was predicted from another test set "
                            f"than {work}/imgs_test.npy", "run `python predict.py` again"])
    assert snapshot(work) == before
    run_script("predict.py", "--workdir", work, "-q")
    run_script("submission.py", "--workdir", work, "--raw", tmp_path / "raw", "-q")
    first = (work / "submission.csv").read_text().splitlines()[1].split(",")[0]
    assert int(first) > 100  # the new ids, with their own predictions


def test_a_model_of_other_training_arrays_is_refused_by_visualize(trained_demo, tmp_path):
    raw, source, _ = trained_demo
    work = tmp_path / "work"
    shutil.copytree(source, work)
    changed = tmp_path / "raw"
    shutil.copytree(raw, changed)
    frame = sorted((changed / "train").glob("*_1.tif"))[0]
    frame.write_bytes((changed / "train" / frame.name.replace("_1.", "_2.")).read_bytes())
    run_script("data.py", "--raw", changed, "--workdir", work, "-q")
    result = run_script("visualize.py", "--workdir", work, "-n", 0, "--no-show", check=False)
    assert_refused(result, [f"{work}/model was trained on other arrays than "
                            f"{work}/imgs_train.npy", "run `python train.py` again"])


def test_a_new_csv_that_fails_its_check_leaves_the_old_one_in_place(trained_demo, tmp_path):
    raw, source, _ = trained_demo
    work = tmp_path / "work"
    shutil.copytree(source, work)
    run_script("submission.py", "--workdir", work, "--raw", work / "no-raw", "-q")
    test, ids = np.load(work / "imgs_test.npy"), np.load(work / "imgs_id_test.npy")
    ids[1] = ids[0]  # two images of one id: the CSV would hold it twice
    np.save(work / "imgs_id_test.npy", ids)
    record = {"test": arrays.fingerprint(test, np.load(work / "imgs_id_test.npy"))}
    (work / "imgs_mask_test.json").write_text(json.dumps(record))  # as if predicted so
    before = snapshot(work)
    result = run_script("submission.py", "--workdir", work, "--raw", work / "no-raw", "-q",
                        check=False)
    assert_refused(result, [f"{work}/submission.csv left as it was", f"id {ids[0]} appears twice",
                            "python data.py"])
    assert snapshot(work) == before  # the good CSV, byte for byte, and no temporary
