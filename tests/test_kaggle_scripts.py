"""data.py --download and submission.py --submit / --scores run as a user runs them, against the
stand-in Kaggle server (tests/kaggle_stub.py): the real kaggle client, nothing leaves 127.0.0.1."""

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_script, shared
from kit.rle import read_submission

sys.path.insert(0, str(Path(__file__).parent))  # for kaggle_stub, whatever pytest's import mode
from kaggle_stub import (
    FAKE_KEY,
    clean_env,
    competition_zip,
    tiny_competition,  # noqa: E402
    user_env,
    zip_bytes)

pytestmark = pytest.mark.slow  # every test here runs a script (tests/conftest.py)

SLUG = "ultrasound-nerve-segmentation"


def folders(tmp_path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    return raw, work, ("--raw", raw, "--workdir", work)


def check_error(result, *phrases):
    """A user error: exit code 2 and one line saying what to do (after any progress bars on
    stderr); no traceback, no key."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and output.count("error: ") == 1, output
    for phrase in phrases:
        assert phrase in message
    assert "Traceback" not in output and FAKE_KEY not in output


def write_predictions(work, ids=(1, 2, 3), h=20, w=28):
    """What data.py and predict.py leave for submission.py: test images, final masks, test ids."""
    work.mkdir(parents=True, exist_ok=True)
    masks = np.zeros((len(ids), h, w), np.uint8)
    masks[0, 3:9, 4:7] = 1
    np.save(work / "imgs_test.npy", np.zeros_like(masks))
    np.save(work / "imgs_mask_test.npy", masks)
    np.save(work / "imgs_id_test.npy", np.array(ids, np.int32))


# ---------------------------------------------------------------- download


@pytest.mark.parametrize("nested", [False, True], ids=["folders", "nested-zips"])
def test_download_extracts_and_converts(env, stub, tmp_path, nested):
    files = tiny_competition()
    stub.zip_bytes = competition_zip(files, nested)
    raw, work, dirs = folders(tmp_path)
    run_script("data.py", "--download", *dirs, "-q", env=env)
    assert stub.calls("DownloadDataFiles") == [{"competitionName": SLUG}]
    assert (raw / f"{SLUG}.zip").read_bytes() == stub.zip_bytes
    assert (raw / "test" / "2.tif").read_bytes() == files["test/2.tif"]
    assert (raw / "sample_submission.csv").read_bytes() == files["sample_submission.csv"]
    assert not list(raw.glob("*/*.zip")) and not list(
        raw.glob(".*"))  # no nested zip or scratch left
    assert np.load(work / "imgs_train.npy").shape == (6, 20, 28)
    assert np.load(work / "imgs_id_test.npy").tolist() == [1, 2, 3]

    seen = len(stub.requests)
    run_script("data.py", "--download", *dirs, "-q", env=env)
    assert len(stub.requests) == seen  # everything in place: no request at all


@pytest.mark.parametrize("member",
                         ["../escaped.txt", "{tmp}/escaped.txt", "train/../../escaped.txt"])
def test_download_with_a_path_traversal_member_is_refused(env, stub, tmp_path, member):
    files = tiny_competition()
    files[member.format(tmp=tmp_path)] = b"gotcha"  # each would land in tmp_path, beside raw/
    stub.zip_bytes = zip_bytes(files)
    raw, work, dirs = folders(tmp_path)
    check_error(run_script("data.py", "--download", *dirs, check=False, env=env), "outside",
                "refusing")
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(p.name for p in raw.iterdir()) == [f"{SLUG}.zip"]  # nothing extracted, no scratch
    assert not work.exists()


@pytest.mark.parametrize("how", ["corrupt", "truncated"])
def test_bad_download_leaves_raw_empty(env, stub, tmp_path, how):
    good = competition_zip(tiny_competition(), nested=False)
    middle = len(good) // 3
    stub.zip_bytes = (good[:middle] + bytes([good[middle] ^ 0xFF]) +
                      good[middle + 1:] if how == "corrupt" else good[:len(good) // 2])
    raw, work, dirs = folders(tmp_path)
    check_error(run_script("data.py", "--download", *dirs, check=False, env=env),
                "corrupt or truncated")
    assert list(raw.iterdir()) == []


# ---------------------------------------------------------------- submit and scores


def test_submission_is_validated_before_upload(env, stub, tmp_path):
    raw, work, dirs = folders(tmp_path)
    write_predictions(work, ids=(1, 2, 3))
    raw.mkdir()
    (raw / "sample_submission.csv").write_text(
        "img,pixels\n1,\n2,\n3,\n4,\n")  # id 4 was never predicted
    check_error(run_script("submission.py", *dirs, "--submit", check=False, env=env),
                "sample_submission.csv")
    assert stub.requests == []


def test_scores_lists_recent_submissions(env, stub, tmp_path):
    stub.history = [{
        "ref": 2,
        "date": "2024-02-01T10:30:00.000Z",
        "description": "second",
        "status": "COMPLETE",
        "publicScore": "0.0"
    }, {
        "ref": 1,
        "date": "2024-01-01T09:00:00.000Z",
        "description": "first",
        "status": "ERROR"
    }]
    lines = run_script("submission.py", "--scores", env=env).stdout.splitlines()
    assert [line.split()
            for line in lines] == [["2024-02-01", "10:30", "complete", "0.0", "second"],
                                   ["2024-01-01", "09:00", "error", "first"]]


def dead_proxy():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("case", ["no credentials", "401", "403", "upload fails", "no server"])
def test_errors_are_one_line(stub, tmp_path, case):
    raw, work, dirs = folders(tmp_path)
    write_predictions(work)
    proxy = dead_proxy() if case == "no server" else stub.url
    env = clean_env(tmp_path, proxy) if case == "no credentials" else user_env(tmp_path, proxy)
    download = ("data.py", "--download", *dirs)
    submit = ("submission.py", *dirs, "--submit", "-m", "m")
    if case == "no credentials":
        check_error(run_script(*download, check=False, env=env), "no Kaggle credentials",
                    "kaggle.json", "KAGGLE_USERNAME")
    elif case == "401":
        stub.fail["DownloadDataFiles"] = 401
        check_error(run_script(*download, check=False, env=env), "HTTP 401",
                    "https://www.kaggle.com/settings")
    elif case == "403":
        stub.fail["StartSubmissionUpload"] = 403
        check_error(run_script(*submit, check=False, env=env), "HTTP 403",
                    f"https://www.kaggle.com/competitions/{SLUG}/rules")
    elif case == "upload fails":
        stub.fail["PUT"] = 400
        check_error(run_script(*submit, check=False, env=env), "upload of", "failed")
        assert stub.calls("CreateSubmission") == []
    else:
        check_error(run_script(*download, check=False, env=env), "cannot reach Kaggle")
    assert not (raw / "train").exists()


# ---------------------------------------------------------------- the whole loop, on real samples


def test_download_train_predict_submit(env, stub, tmp_path):
    """Done when: download, the pipeline, submit; the server holds the very file and its score is
    printed."""
    sample = shared("nerve-kaggle-sample")
    files = {
        f"{p.parent.name}/{p.name}": p.read_bytes()
        for p in sorted(sample.glob("*/*.tif")) if p.name != "2_20_mask.tif"
    }  # a mask without its image, as found in the wild
    test_ids = sorted(int(p.stem) for p in (sample / "test").glob("*.tif"))
    files["sample_submission.csv"] = "".join(["img,pixels\n"] + [f"{i},\n"
                                                                 for i in test_ids]).encode()
    stub.zip_bytes = competition_zip(files, nested=True)
    stub.public_score = "0.55123"
    raw, work, dirs = folders(tmp_path)

    run_script("data.py", "--download", *dirs, "-q", env=env)
    run_script("train.py", *dirs, "--image-size", 32, 48, "--epochs", 1, "--width", 4, "--depth", 2,
               "--folds", 2, "--batch-size", 8, "-q", env=env)
    run_script("predict.py", *dirs, "-q", env=env)
    result = run_script("submission.py", *dirs, "--submit", "-m", "test", env=env)

    (uploaded, ) = stub.uploads.values()
    assert uploaded == (work / "submission.csv").read_bytes()
    assert len(read_submission(work / "submission.csv", (420, 580), test_ids)) == 24
    (create, ) = stub.calls("CreateSubmission")
    assert create["submissionDescription"] == "test"
    assert result.stdout.splitlines()[-1] == f"public score: {float(stub.public_score)}"

    seen = len(stub.requests)
    run_script("data.py", "--download", *dirs, "-q", env=env)
    assert len(stub.requests) == seen  # a re-run downloads nothing
