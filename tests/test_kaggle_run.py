"""kernel/run.py (make kaggle-run) as a user runs it, against the stand-in Kaggle server
(tests/kaggle_stub.py): push, follow, fetch the outputs, submit; the real kaggle client,
nothing leaves 127.0.0.1, a poll every 10 ms."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_script

sys.path.insert(0, str(Path(__file__).parent))  # for kaggle_stub, whatever pytest's import mode
from kaggle_stub import FAKE_KEY, STORAGE, USER, rpc_url, user_env  # noqa: E402

SLUG = "ultrasound-nerve-segmentation"
KERNEL = f"{USER}/unet-starter-kit"


def kaggle_run(env, tmp_path, *args):
    return run_script("kernel/run.py", "--build", tmp_path / "build", "--out", tmp_path / "out",
                      "--poll-every", 0.01, *args, check=False, env=env)


def outputs():
    """What the notebook leaves in /kaggle/working, as Kaggle lists it."""
    return {
        "submission.csv": b"img,pixels\n1,1 2\n2,\n3,7 4\n" + os.urandom(16).hex().encode(),
        "report.html": b"<!doctype html><p class=score>validation Dice 0.6123</p>",
        "model/config.json": json.dumps({
            "validation_dice": 0.61234,
            "folds": ["fold0.keras"]
        }).encode(),
        "model/fold0.keras": os.urandom(3000),
        "preview/1.png": b"\x89PNG fake"
    }


def log_json(lines):
    """A notebook log as Kaggle keeps it: JSON events, one per chunk printed."""
    return json.dumps([{
        "stream_name": "stdout",
        "time": i * 0.5,
        "data": line + "\n"
    } for i, line in enumerate(lines)])


def check_error(result, *phrases):
    """Exit code 2, the last line `error: ...` naming each phrase, no traceback, no key."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: "), output
    for phrase in phrases:
        assert phrase in message, message
    assert "Traceback" not in output and FAKE_KEY not in output
    return message


def dead_proxy():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ---------------------------------------------------------------- success


@pytest.mark.slow
@pytest.mark.parametrize("case", ["new notebook, t4x2", "earlier version, cpu, own slug"])
def test_push_follow_fetch_submit(env, stub, tmp_path, case):
    stub.outputs = outputs()
    stub.output_page_size = 2  # three pages of files
    stub.kernel_log = log_json(["$ python data.py", "$ python train.py", "done"])
    stub.kernel_statuses = ["QUEUED", "QUEUED", "RUNNING", "RUNNING", "COMPLETE"]
    stub.public_score = "0.58123"
    args = ["--submit", "-m", "notebook v1"]
    kernel, slug = KERNEL, "unet-starter-kit"
    waiting = []
    if case.startswith("earlier"):  # its last version completed: push a new one
        stub.kernel_exists = True
        # Checked before the push, then once more while Kaggle still reports that version.
        stub.kernel_statuses[:0] = ["COMPLETE", "COMPLETE"]
        waiting = ["waiting for the new version"]
        kernel, slug = f"{USER}/unet-cpu-run", "unet-cpu-run"
        args += ["--accelerator", "cpu", "--slug", slug]
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.csv").write_text("from an earlier run")

    result = kaggle_run(env, tmp_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    posts = [r["url"] for r in stub.requests if r["method"] == "POST"]
    assert posts[:2] == [rpc_url("GetKernelSessionStatus"), rpc_url("SaveKernel")]  # look first
    (pushed, ) = stub.kernels
    assert pushed["slug"] == kernel
    assert pushed["text"] == (tmp_path / "build" / "kernel.py").read_text()
    assert pushed["competitionDataSources"] == [SLUG]
    if slug == "unet-starter-kit":
        assert pushed["machineShape"] == "NvidiaTeslaT4" and pushed["enableGpu"] is True
    else:
        assert "machineShape" not in pushed and pushed.get("enableGpu", False) is False
        assert pushed["newTitle"] == "unet cpu run"  # Kaggle names new notebooks by title
    assert stub.kernel_statuses == ["COMPLETE"]  # polled through every status
    progress = [line for line in result.stdout.splitlines() if line.startswith(kernel + ":")]
    expected = [f"{kernel}: {s}" for s in [*waiting, "queued", "running", "complete"]]
    assert [line.split(",")[0] for line in progress] == expected
    assert all(line.endswith(" elapsed") for line in progress)

    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        sorted([*stub.outputs, f"{slug}.log"])  # the earlier run's files are gone
    for name, data in stub.outputs.items():
        assert (out / name).read_bytes() == data
    assert (out / f"{slug}.log").read_text() == stub.kernel_log
    assert "validation Dice: 0.6123" in result.stdout.splitlines()

    (uploaded, ) = stub.uploads.values()
    assert uploaded == (out / "submission.csv").read_bytes() == stub.outputs["submission.csv"]
    (create, ) = stub.calls("CreateSubmission")
    assert create["submissionDescription"] == "notebook v1" and create["competitionName"] == SLUG
    assert result.stdout.splitlines()[-1] == "public score: 0.58123"

    fetched = [r for r in stub.requests if r["method"] == "GET"]
    assert len(fetched) == 5 and all(r["url"].startswith(STORAGE) for r in fetched)
    assert not any("Authorization" in r["headers"] for r in fetched)  # no key sent to storage
    assert FAKE_KEY not in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "home", "out"]  # no scratch


@pytest.mark.slow
def test_a_running_version_is_followed_not_pushed_again(env, stub, tmp_path):
    stub.kernel_exists = True  # pushed by an earlier make kaggle-run, still running
    stub.kernel_statuses = ["RUNNING", "RUNNING", "COMPLETE"]
    stub.outputs = outputs()
    result = kaggle_run(env, tmp_path, "--accelerator", "p100")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stub.kernels == [] and not (tmp_path / "build").exists()
    assert "already running: following it" in result.stdout
    assert len(stub.calls("GetKernelSessionStatus")) == 3
    assert "validation Dice: 0.6123" in result.stdout
    assert stub.calls("CreateSubmission") == []  # no --submit, no submission


@pytest.mark.slow
def test_an_output_named_outside_the_folder_is_refused(env, stub, tmp_path):
    stub.outputs = {**outputs(), "../escaped.txt": b"gotcha"}
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.csv").write_text("the last good run's")
    check_error(kaggle_run(env, tmp_path), "'../escaped.txt'", "outside", "refusing")
    assert not (tmp_path / "escaped.txt").exists()
    assert not [r for r in stub.requests if r["method"] == "GET"]  # refused before any download
    assert [p.name for p in out.iterdir()] == ["submission.csv"]


# ---------------------------------------------------------------- the notebook fails


@pytest.mark.slow
@pytest.mark.parametrize("how", ["error", "cancelled"])
def test_failed_notebook_shows_its_log_tail(env, stub, tmp_path, how):
    lines = [f"epoch {i}/30" for i in range(1, 31)]
    if how == "error":
        stub.kernel_statuses = ["QUEUED", "RUNNING", "ERROR"]
        stub.kernel_failure = "Your notebook tried to allocate more memory\nthan is available."
        lines += ["$ python predict.py", "error: out of memory: lower --batch-size"]
        stub.kernel_log = log_json(lines)
    else:
        stub.kernel_statuses = ["QUEUED", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED"]
        stub.kernel_log = "\n".join(lines) + "\n"  # a log in plain text reads the same
    stub.outputs = outputs()
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.csv").write_text("the last good run's")

    result = kaggle_run(env, tmp_path, "--submit")
    if how == "error":
        reason = "failed (Your notebook tried to allocate more memory than is available.)"
        message = check_error(result, KERNEL, reason)
    else:
        message = check_error(result, KERNEL, "was cancelled")
    assert f"https://www.kaggle.com/code/{KERNEL}" in message
    shown = [line[4:] for line in result.stderr.splitlines() if line.startswith("  | ")]
    assert shown == lines[-20:]
    assert (tmp_path / "out-failed.log").read_text() == stub.kernel_log
    assert (out / "submission.csv").read_text() == "the last good run's"  # left as it was
    assert not [r for r in stub.requests if r["method"] == "GET"]  # no output fetched
    assert stub.calls("StartSubmissionUpload") == []


# ---------------------------------------------------------------- refused before or by Kaggle


@pytest.mark.slow
def test_unknown_accelerator_sends_nothing(env, stub, tmp_path):
    result = kaggle_run(env, tmp_path, "--accelerator", "h100")
    message = check_error(result, "unknown accelerator 'h100'", "t4x2", "p100", "cpu")
    assert result.stderr.strip() == message and result.stdout == ""
    assert stub.requests == [] and not (tmp_path / "build").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["401", "403", "no server"])
def test_errors_are_one_line(stub, tmp_path, case):
    env = user_env(tmp_path, dead_proxy() if case == "no server" else stub.url)
    if case == "401":
        stub.fail["GetKernelSessionStatus"] = 401
        check_error(kaggle_run(env, tmp_path), "HTTP 401", "https://www.kaggle.com/settings")
        assert stub.kernels == []
    elif case == "403":  # e.g. the id names another user than the credentials'
        stub.fail["SaveKernel"] = 403
        check_error(kaggle_run(env, tmp_path, "--user", "someone-else"), "HTTP 403",
                    "someone-else/unet-starter-kit", "KAGGLE_USER")
        assert len(stub.calls("SaveKernel")) == 1
        assert len(stub.calls("GetKernelSessionStatus")) == 1  # the check before the push only
    else:
        check_error(kaggle_run(env, tmp_path), "cannot reach Kaggle")


@pytest.mark.slow
def test_first_status_check_refused_means_push(env, stub, tmp_path):
    """Kaggle may answer 403 rather than 404 for a notebook that does not exist yet."""
    stub.outputs = outputs()
    stub.fail["GetKernelSessionStatus"] = 403
    result = kaggle_run(env, tmp_path)
    check_error(result, "HTTP 403", KERNEL)  # the status after the push is refused too
    assert len(stub.calls("SaveKernel")) == 1
    assert "carries on on Kaggle: run this again to follow it" in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("submit", ["1", "0"])
def test_make_kaggle_run_passes_its_variables(submit):
    made = subprocess.run([
        "make", "-n", "-o", ".venv/.installed", "kaggle-run", "PY=python", "KAGGLE_USER=me",
        "KERNEL_SLUG=unet-l4-run", "ACCELERATOR=p100", f"SUBMIT={submit}"
    ], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    (command, ) = [line for line in made.stdout.splitlines() if "kernel/run.py" in line]
    words = command.split()
    assert words[:2] == ["python", "kernel/run.py"]
    assert " ".join(words[2:]).startswith("--build build/kernel --accelerator p100 --user me "
                                          "--slug unet-l4-run")
    assert ("--submit" in words) == (submit == "1")
