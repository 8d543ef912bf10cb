"""kit/kaggle_api.py's and kernel/kernels_api.py's own wording and checks, in process: nothing
here imports the kaggle client (test_kaggle_io.py runs each call against a stand-in server, in a
fresh Python)."""

import json
import sys

import pytest
import requests

from conftest import ROOT
from kit import kaggle_api
from kit.files import UserError

sys.path.insert(0, str(ROOT / "kernel"))  # as kernel/run.py imports it
import kernels_api  # noqa: E402


def http_error(code, body=None):
    reply = requests.Response()
    reply.status_code = code
    reply._content = json.dumps(body).encode() if body is not None else b"<html>oops</html>"
    return requests.HTTPError(response=reply)


def test_http_failures_say_what_to_do_in_one_line():
    said = {code: kaggle_api._http_message(http_error(code), "some-comp") for code in (401, 403,
                                                                                       404, 429)}
    assert "HTTP 401" in said[401] and "https://www.kaggle.com/settings" in said[401]
    assert kaggle_api.RULES_URL.format("some-comp") in said[403]
    assert "'some-comp' not found" in said[404] and "wait a few minutes" in said[429]
    notebook = kaggle_api._http_message(http_error(404), None, kernel="me/nb")
    assert "notebook me/nb not found" in notebook and "--slug" in notebook
    other = kaggle_api._http_message(http_error(500, {"message": "busy\n  try later"}), "c")
    assert other == "Kaggle answered HTTP 500 (busy try later): run again later"
    assert kaggle_api._http_message(http_error(502), "c") == (
        "Kaggle answered HTTP 502: run again later")  # a body that is not JSON adds nothing
    assert all("\n" not in text for text in [*said.values(), notebook, other])


def test_client_exceptions_become_user_errors():
    with pytest.raises(UserError, match="HTTP 401"):
        with kaggle_api._errors("c"):
            raise http_error(401)
    with pytest.raises(UserError, match="cannot reach Kaggle"):
        with kaggle_api._errors("c"):
            raise requests.ConnectionError("refused")
    with pytest.raises(KeyError):  # anything else is a bug, not the user's to fix
        with kaggle_api._errors("c"):
            raise KeyError("x")


def test_accelerators_by_their_friendly_names():
    assert kernels_api.accelerator_settings("T4x2") == {
        "machine_shape": "NvidiaTeslaT4", "enable_gpu": True, "enable_tpu": False}
    assert kernels_api.accelerator_settings("cpu")["enable_gpu"] is False
    with pytest.raises(UserError, match="unknown accelerator 'tpu': use one of t4x2, p100, cpu"):
        kernels_api.machine_shape("tpu")


def test_scores_and_notebook_logs_are_read_leniently():
    assert kaggle_api._score("0.61234") == pytest.approx(0.61234)
    assert kaggle_api._score("") is None and kaggle_api._score(None) is None
    events = json.dumps([{"stream_name": "stdout", "time": 0, "data": "epoch 1\r"},
                         {"stream_name": "stderr", "time": 1, "data": "epoch 2\n\n"}, "noise"])
    assert kernels_api.log_lines(events) == ["epoch 1", "epoch 2"]
    assert kernels_api.log_lines("a  \n\nb\n") == ["a", "b"]  # a log in plain text
    assert kernels_api.log_lines(None) == []


def test_output_names_that_would_leave_the_folder_are_refused(tmp_path):
    assert kernels_api._safe_name("model/fold0.keras", tmp_path) == "model/fold0.keras"
    for name in ("../escaped.txt", "/etc/passwd", "a/../../b", "a\\..\\b", ""):
        with pytest.raises(UserError, match="refusing to download the outputs"):
            kernels_api._safe_name(name, tmp_path)


def test_a_fetched_folder_replaces_the_old_one_whole(tmp_path):
    dest, new = tmp_path / "out", tmp_path / "new"
    dest.mkdir()
    (dest / "stale.csv").write_text("old")
    new.mkdir()
    (new / "submission.csv").write_text("new")
    kernels_api._replace_folder(new, dest)
    assert [p.name for p in dest.iterdir()] == ["submission.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.old left behind
