"""kaggle_io (kit/kaggle_api.py, the competition half: download, submit, submissions) against a
stand-in Kaggle server (tests/kaggle_stub.py): offline, a few seconds. The notebook half,
kernel/kernels_api.py, is tested through kernel/run.py in test_kaggle_run.py.

Each call to kaggle_io runs in a fresh Python process. The kaggle client reads its settings
when first imported (KaggleApi.config_dir and its --local switch are class attributes, and
`import kaggle` authenticates right away), so in a shared test process whichever test
imported it first would fix HOME, KAGGLE_CONFIG_DIR and the endpoint for all the others.
A subprocess per call costs about half a second and needs no resetting of module state.
"""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for kaggle_stub, whatever pytest's import mode
from kaggle_stub import (
    FAKE_KEY,
    RPC_PREFIX,
    ROOT,
    STORAGE,
    UPLOAD,
    USER,  # noqa: E402
    clean_env)

SLUG = "ultrasound-nerve-segmentation"

SNIPPET = """
import json, sys, time
from kit import files as common, kaggle_api as kaggle_io
fn, args, kwargs, no_backoff = json.loads(sys.argv[1])
if no_backoff:  # the client waits 2+4+8+16+32 s between download retries: skip the waiting
    time.sleep = lambda seconds: None
try:
    print("RESULT " + json.dumps({"value": getattr(kaggle_io, fn)(*args, **kwargs)}, default=str))
except common.UserError as e:
    print("RESULT " + json.dumps({"error": str(e)}))
"""


def call(env, fn, *args, no_backoff=False, **kwargs):
    """Run kaggle_io.<fn>(*args, **kwargs) in a fresh Python; return (value, error message,
    output)."""
    proc = subprocess.run(
        [sys.executable, "-c", SNIPPET,
         json.dumps([fn, args, kwargs, no_backoff])], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert FAKE_KEY not in output  # nothing the kit or the client prints may show the key
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, output
    result = json.loads(results[-1][len("RESULT "):])
    if "error" in result:
        assert "\n" not in result["error"]
    return result.get("value"), result.get("error"), output


def make_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train/1_1.tif", os.urandom(3000) + bytes(3000))
        z.writestr("train_masks.csv", "img,pixels\n1_1,1 2\n" * 50)
    return buf.getvalue()


def write_csv(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_bytes(b"img,pixels\n1,\n2,10 5\n" + os.urandom(64).hex().encode())
    return path


# ---------------------------------------------------------------- download


def test_download_is_byte_identical(env, stub, tmp_path):
    stub.zip_bytes = make_zip()
    raw = tmp_path / "raw"
    value, error, out = call(env, "download", SLUG, str(raw), quiet=True)
    assert error is None
    assert Path(value) == raw / f"{SLUG}.zip"
    assert (raw / f"{SLUG}.zip").read_bytes() == stub.zip_bytes
    assert sorted(p.name for p in raw.iterdir()) == [f"{SLUG}.zip"]  # no temp folder left behind
    assert stub.calls("DownloadDataFiles") == [{"competitionName": SLUG}]
    rpc, fetch = stub.requests
    assert rpc["url"] == "http://localhost" + RPC_PREFIX + "DownloadDataFiles"
    expected = "Basic " + base64.b64encode(f"{USER}:{FAKE_KEY}".encode()).decode()
    assert rpc["headers"]["Authorization"] == expected
    assert fetch["url"].startswith(f"{STORAGE}/competitions-data/{SLUG}.zip?")
    assert "Authorization" not in fetch["headers"]  # the key is not sent on to storage


@pytest.mark.parametrize("how", ["corrupt", "short", "connection dropped"])
def test_bad_download_leaves_no_zip(env, stub, tmp_path, how):
    good = make_zip()
    if how == "corrupt":  # right size, a flipped byte inside a member: only the CRC check sees it
        stub.zip_bytes = good[:200] + bytes([good[200] ^ 0xFF]) + good[201:]
    elif how == "short":  # served cleanly, but only half of it
        stub.zip_bytes = good[:len(good) // 2]
    else:  # Content-Length promises it all; the server hangs up halfway (every retry too)
        stub.zip_bytes, stub.truncate = good, True
    raw = tmp_path / "raw"
    value, error, out = call(env, "download", SLUG, str(raw), quiet=True, no_backoff=True)
    assert error == f"download of {SLUG} was corrupt or truncated: run again"
    assert not (raw / f"{SLUG}.zip").exists()
    assert not list(raw.glob("*.zip"))


def test_download_replaces_a_corrupt_zip(env, stub, tmp_path):
    stub.zip_bytes = make_zip()
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{SLUG}.zip").write_bytes(stub.zip_bytes[:-40])  # a zip cut short by an earlier crash
    value, error, out = call(env, "download", SLUG, str(raw), quiet=True)
    assert error is None and len(stub.calls("DownloadDataFiles")) == 1
    assert (raw / f"{SLUG}.zip").read_bytes() == stub.zip_bytes


def test_download_keeps_an_existing_zip(env, stub, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{SLUG}.zip").write_bytes(make_zip())
    value, error, out = call(env, "download", SLUG, str(raw), quiet=True)
    assert error is None and Path(value) == raw / f"{SLUG}.zip"
    assert stub.requests == []


# ---------------------------------------------------------------- submit


def test_submit_polls_until_scored(env, stub, tmp_path):
    csv = write_csv(tmp_path)
    stub.statuses = ["PENDING", "COMPLETE"]
    stub.public_score = "0.61234"
    stub.history = [{
        "ref": 7,
        "date": "2024-01-01T00:00:00.000Z",
        "status": "COMPLETE",
        "publicScore": "0.1"
    }]
    value, error, out = call(env, "submit", SLUG, str(csv), "unet v1", poll_every=0.01, quiet=True)
    assert error is None
    assert value == pytest.approx(0.61234)
    assert len(stub.calls("ListSubmissions")) == 2
    (start, ) = stub.calls("StartSubmissionUpload")
    assert start["competitionName"] == SLUG and start["fileName"] == "submission.csv"
    assert start["contentLength"] == csv.stat().st_size
    assert stub.uploads == {"blob-1": csv.read_bytes()}
    (put, ) = [r for r in stub.requests if r["method"] == "PUT"]
    assert put["url"] == f"{UPLOAD}/upload/blob-1"
    (create, ) = stub.calls("CreateSubmission")
    assert create == {
        "competitionName": SLUG,
        "blobFileTokens": "blob-1",
        "submissionDescription": "unet v1"
    }


def test_submit_upload_failure(env, stub, tmp_path):
    stub.fail["PUT"] = 400
    value, error, out = call(env, "submit", SLUG, str(write_csv(tmp_path)), "m", quiet=True)
    assert error.startswith("upload of ") and "failed: run again" in error
    assert stub.calls("CreateSubmission") == []


def test_submit_scoring_error(env, stub, tmp_path):
    stub.statuses = ["ERROR"]
    stub.error_description = "Submission must have 5508 rows\n(found 2)"
    value, error, out = call(env, "submit", SLUG, str(write_csv(tmp_path)), "m", poll_every=0.01,
                             quiet=True)
    assert "was submitted, but Kaggle could not score it" in error
    assert "5508 rows (found 2)" in error


def test_submit_timeout(env, stub, tmp_path):
    stub.statuses = ["PENDING"]
    value, error, out = call(env, "submit", SLUG, str(write_csv(tmp_path)), "m", timeout=0.2,
                             poll_every=0.05, quiet=True)
    assert "had not scored it after 0.2 s" in error
    assert f"https://www.kaggle.com/competitions/{SLUG}/submissions" in error


def test_submit_missing_file(env, stub, tmp_path):
    value, error, out = call(env, "submit", SLUG, str(tmp_path / "nope.csv"), "m")
    assert "nope.csv not found" in error and stub.requests == []


def test_submissions_lists_newest_first(env, stub):
    stub.history = [{
        "ref": 2,
        "date": "2024-02-01T10:30:00.000Z",
        "description": "second",
        "status": "COMPLETE",
        "publicScore": "0.70",
        "privateScore": "0.68"
    }, {
        "ref": 1,
        "date": "2024-01-01T09:00:00.000Z",
        "description": "first",
        "status": "ERROR"
    }]
    value, error, out = call(env, "submissions", SLUG)
    assert error is None
    assert value == [{
        "date": "2024-02-01 10:30",
        "description": "second",
        "status": "complete",
        "public_score": 0.70,
        "private_score": 0.68
    }, {
        "date": "2024-01-01 09:00",
        "description": "first",
        "status": "error",
        "public_score": None,
        "private_score": None
    }]


# ---------------------------------------------------------------- errors


def test_bad_credentials(env, stub, tmp_path):
    stub.fail["DownloadDataFiles"] = 401
    value, error, out = call(env, "download", SLUG, str(tmp_path / "raw"), quiet=True)
    assert "HTTP 401" in error and "https://www.kaggle.com/settings" in error
    assert list((tmp_path / "raw").iterdir()) == []  # no empty download folder left behind


def test_rules_not_accepted(env, stub, tmp_path):
    stub.fail["StartSubmissionUpload"] = 403
    value, error, out = call(env, "submit", SLUG, str(write_csv(tmp_path)), "m", quiet=True)
    assert "HTTP 403" in error and f"https://www.kaggle.com/competitions/{SLUG}/rules" in error


def test_unknown_competition(env, stub):
    stub.fail["ListSubmissions"] = 404
    value, error, out = call(env, "submissions", "no-such-competition")
    assert "'no-such-competition' not found" in error


def test_no_server_listening(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = clean_env(tmp_path, f"http://127.0.0.1:{port}")
    env["KAGGLE_USERNAME"], env["KAGGLE_KEY"] = USER, FAKE_KEY  # the other way to give credentials
    value, error, out = call(env, "download", SLUG, str(tmp_path / "raw"), quiet=True)
    assert error.startswith("cannot reach Kaggle") and "/kaggle/input" in error


def test_no_credentials(tmp_path, stub):
    env = clean_env(tmp_path, stub.url)
    value, error, out = call(env, "submissions", SLUG)
    assert "no Kaggle credentials" in error and "kaggle.json" in error
    assert "KAGGLE_USERNAME" in error and "KAGGLE_API_TOKEN" in error
    assert "Authentication required" not in out  # the client's page of help stays hidden
    assert stub.requests == []


@pytest.mark.parametrize("content, says", [
    ('{"username": "%s", "key": "%s"' % (USER, FAKE_KEY), "not valid JSON"),  # cut short
    (json.dumps([USER, FAKE_KEY]), "not a JSON object"),  # the client fails on it: TypeError
    (json.dumps({"username": USER}), 'it needs a "username" and a "key"'),
], ids=["cut short", "a list", "no key"])
def test_damaged_kaggle_json(env, stub, content, says):
    """Reported as damaged, naming the file, not as missing; its content never shown (call()
    checks the key is not in the output)."""
    config = Path(env["KAGGLE_CONFIG_DIR"], "kaggle.json")
    config.write_text(content)
    value, error, out = call(env, "submissions", SLUG)
    assert error.startswith(f"{config} is damaged ({says})"), error
    assert "https://www.kaggle.com/settings" in error and "no Kaggle credentials" not in error
    assert USER not in error and "Traceback" not in out
    assert stub.requests == []


def test_access_token(tmp_path, stub):
    env = clean_env(tmp_path, stub.url)
    env["KAGGLE_API_TOKEN"] = FAKE_KEY
    stub.tokens = {FAKE_KEY: USER}
    value, error, out = call(env, "submissions", SLUG)
    assert error is None and value == []
    (listing, ) = [r for r in stub.requests if r["url"].endswith("/ListSubmissions")]
    assert listing["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"


def test_rejected_access_token(tmp_path, stub):
    env = clean_env(tmp_path, stub.url)
    env["KAGGLE_API_TOKEN"] = FAKE_KEY  # the stub knows no tokens: IntrospectToken says inactive
    value, error, out = call(env, "submissions", SLUG)
    assert "did not accept the token in KAGGLE_API_TOKEN" in error
    assert stub.calls("ListSubmissions") == []


def test_verbose_environment_never_shows_credentials(env, stub):
    env["VERBOSE"] = "1"  # makes the client print each request with its headers
    value, error, out = call(env, "submissions", SLUG)
    assert error is None and len(stub.calls("ListSubmissions")) == 1
    basic = base64.b64encode(f"{USER}:{FAKE_KEY}".encode()).decode()
    assert basic not in out and "Authorization" not in out
