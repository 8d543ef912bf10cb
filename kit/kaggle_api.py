"""The competition half of Kaggle's API, for the steps: download the competition zip
(data.py --download), submit and list submissions (submission.py --submit, --scores).

All calls go through the official `kaggle` client (kaggle==2.2.4), made here once per process
(_api). Its failures become one-line `UserError`s worded here (_errors), never the client's
exception text, so that no request detail (and never a credential) ends up on screen. The
notebook half (push the kit's notebook, follow it, fetch its outputs) is kernel/kernels_api.py,
which runs only on the user's machine and shares the client and the wording from here; the
notebook's bundle carries this module, not that one.
"""

import contextlib
import functools
import io
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import requests
import urllib3

from kit.files import UserError

log = logging.getLogger(__name__)

RULES_URL = "https://www.kaggle.com/competitions/{}/rules"
SUBMISSIONS_URL = "https://www.kaggle.com/competitions/{}/submissions"
TOKEN_HELP = ("create a token at https://www.kaggle.com/settings (API section) and save it as "
              "~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json) with chmod 600, "
              "or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN")
NEW_TOKEN = ("replace it with a new token from https://www.kaggle.com/settings (API section), "
             "or delete it to use KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN")
NETWORK = ("cannot reach Kaggle (network unreachable or connection refused): check the internet "
           "connection or proxy; inside a Kaggle notebook nothing needs downloading, "
           "the competition data is read from /kaggle/input")

# ---------------------------------------------------------------- the client


@functools.cache
def _api():
    """An authenticated KaggleApi, made once per process.

    Imported here and not at the top because `import kaggle` authenticates at import time:
    scripts that never talk to Kaggle must work without credentials.
    """
    config = config_path()
    damaged = damaged_config(config)
    if damaged:
        raise UserError(damaged)
    # Without credentials the client prints a page of help (at import, and again in
    # authenticate) and calls exit(1): keep that off the screen and say it in one line.
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), _errors(competition=None), _client_not_verbose():
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError:
        raise UserError(
            "the kaggle package is not installed: pip install -r requirements.txt") from None
    except SystemExit:
        if os.environ.get("KAGGLE_API_TOKEN"):  # set, but the client found it invalid or expired
            raise UserError(
                f"Kaggle did not accept the token in KAGGLE_API_TOKEN: {TOKEN_HELP}") from None
        if config.is_file():  # valid JSON, but the client found no username and key in it
            raise UserError(f"{config} is damaged (it needs a \"username\" and a \"key\"): "
                            f"{NEW_TOKEN}") from None
        raise UserError(
            f"no Kaggle credentials found (looked for {KaggleApi.config}): {TOKEN_HELP}") from None
    if "chmod 600" in said.getvalue():  # the client's warning that kaggle.json is world-readable
        log.warning(f"warning: {api.config} is readable by other users: run chmod 600 {api.config}")
    api.args = [a for a in api.args if a not in ("--verbose", "-v")]
    return api


def config_path():
    """The kaggle.json the client reads (its KaggleApi.config, worked out the same way): found
    before `import kaggle`, which reads it at once."""
    folder = os.environ.get("KAGGLE_CONFIG_DIR")
    if not folder:
        folder = Path.home() / ".kaggle"
        if sys.platform.startswith("linux") and not folder.exists():
            folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return Path(folder) / "kaggle.json"


def damaged_config(path):
    """Why an existing kaggle.json cannot be used, else None. The client skips a file it
    cannot parse and then reports the credentials missing (or fails with a traceback on JSON
    that is not an object). Never quotes the file: it holds the key."""
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_bytes())
    except OSError as e:
        return f"{path} cannot be read ({e.strerror}): fix its permissions (chmod 600 {path})"
    except ValueError:  # not JSON, or not text
        return f"{path} is damaged (not valid JSON): {NEW_TOKEN}"
    if not isinstance(values, dict):
        return f"{path} is damaged (not a JSON object): {NEW_TOKEN}"
    return None


@contextlib.contextmanager
def _client_not_verbose():
    """Hide VERBOSE / VERBOSE_OUTPUT from the client while it loads: set to 1 (a common
    variable in build environments) they make it print every request with its Authorization
    header, that is the credentials."""
    saved = {k: os.environ.pop(k) for k in ("VERBOSE", "VERBOSE_OUTPUT") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _errors(competition, kernel=None):
    """Turn the client's network and HTTP exceptions into one-line UserErrors."""
    try:
        yield
    except requests.HTTPError as e:
        raise UserError(_http_message(e, competition, kernel)) from None
    except (requests.ConnectionError, requests.Timeout):
        raise UserError(NETWORK) from None


def _http_message(e, competition, kernel=None):
    code = e.response.status_code if e.response is not None else None
    if code == 401:
        return (
            f"Kaggle rejected the credentials (HTTP 401): they are wrong or expired; {TOKEN_HELP}")
    if code == 403 and kernel:
        return (f"Kaggle refused access to notebook {kernel} (HTTP 403): its owner must be the "
                "user of the credentials (--user, KAGGLE_USER), and notebooks with a GPU need "
                "a phone-verified Kaggle account")
    if code == 404 and kernel:
        return (f"notebook {kernel} not found on Kaggle (HTTP 404): check its owner and slug "
                "(--user and --slug, KAGGLE_USER and KERNEL_SLUG)")
    if code == 403 and competition:
        return (
            f"Kaggle refused access to {competition} (HTTP 403): accept the competition rules at "
            f"{RULES_URL.format(competition)} (this cannot be done through the API), then run again"
        )
    if code == 404 and competition:
        return (f"competition {competition!r} not found on Kaggle (HTTP 404): "
                "check the competition name (the slug in its URL)")
    if code == 429:
        return "Kaggle is rate-limiting requests (HTTP 429): wait a few minutes and run again"
    return f"Kaggle answered HTTP {code}{_server_says(e)}: run again later"


def _server_says(e):
    """The reason Kaggle's JSON error body gives, if any, on one line."""
    try:
        message = e.response.json().get("message") or ""
    except Exception:  # not JSON, or no body: nothing to add
        return ""
    return f" ({_one_line(message)})" if message else ""


def _one_line(text):
    return " ".join(str(text).split())


def username():
    """The Kaggle user the credentials belong to (the owner of pushed notebooks)."""
    api = _api()
    return api.config_values.get(api.CONFIG_NAME_USER)


# ---------------------------------------------------------------- download


def download(competition, raw_dir, quiet=False):
    """Download the competition's zip into raw_dir (not extracted) and return its path."""
    raw_dir = Path(raw_dir)
    final = raw_dir / f"{competition}.zip"
    if final.exists():
        if _is_valid_zip(final):
            log.info(f"{final} already downloaded")
            return final
        log.warning(f"{final} is corrupt or truncated: downloading it again")
        final.unlink()
    api = _api()
    # The client writes straight into its output file and, if interrupted, leaves the
    # partial file plus a resume marker there. Let it work in a hidden folder beside the
    # final zip: a re-run resumes where it stopped, and only a verified zip gets the name.
    partial_dir = raw_dir / f".{competition}.download"
    partial_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _errors(competition):
            api.competition_download_files(competition, path=str(partial_dir), quiet=quiet)
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError, ValueError):
        # The connection dropped mid-file (the client already retried) or the sizes disagree.
        raise UserError(f"download of {competition} was corrupt or truncated: run again") from None
    except OSError as e:  # requests' errors are OSErrors too, but _errors has handled those
        raise UserError(
            f"cannot write the download into {partial_dir} ({e.strerror or 'I/O error'}): "
            "check free disk space and permissions") from None
    finally:
        with contextlib.suppress(OSError):  # refused (401, 403...): nothing to resume from
            partial_dir.rmdir()  # only succeeds when empty

    got = partial_dir / f"{competition}.zip"
    if not quiet:
        log.info(f"checking {got.name}")
    if not _is_valid_zip(got):
        shutil.rmtree(partial_dir, ignore_errors=True)  # nothing worth resuming from
        raise UserError(f"download of {competition} was corrupt or truncated: run again")
    os.replace(got, final)
    shutil.rmtree(partial_dir, ignore_errors=True)
    return final


def _is_valid_zip(path):
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None  # reads every member and checks its CRC
    except Exception:  # missing, not a zip, bad deflate stream...: all mean unusable
        return False


# ---------------------------------------------------------------- submissions


def submit(competition, csv_path, message, timeout=600, poll_every=10, quiet=False):
    """Upload csv_path, wait until Kaggle scores it, return the public score (None if it has
    none)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"{csv_path} not found: write the submission file first (predict.py)")
    api = _api()
    with _errors(competition):
        result = api.competition_submit(str(csv_path), message, competition, quiet=quiet)
    # kaggle 2.2.4 reports a failed upload by a reply, not an exception: an
    # ApiCreateSubmissionResponse (the CLI wrapper: a plain string) saying this.
    if getattr(result, "message", result) == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise UserError(
            f"upload of {csv_path} to Kaggle failed: run again, or submit the file by hand "
            f"at https://www.kaggle.com/competitions/{competition}/submit")
    if not quiet:
        log.info(f"submitted {csv_path}; waiting for Kaggle to score it")
    try:
        return _wait_for_score(api, competition, getattr(result, "ref", 0), timeout, poll_every)
    except UserError as e:
        raise UserError(f"{csv_path} was submitted, but {e}") from None


def _wait_for_score(api, competition, ref, timeout, poll_every):
    deadline = time.monotonic() + timeout
    while True:
        with _errors(competition):
            subs = api.competition_submissions(competition) or []
        # The one just made: by its id when Kaggle gave one, else the newest.
        mine = next((s for s in subs if s.ref == ref), None) if ref else (subs[0] if subs else None)
        status = mine.status.name if mine is not None else "PENDING"
        if status == "COMPLETE":
            return _score(mine.public_score)
        if status == "ERROR":
            reason = _one_line(mine.error_description or "no reason given")
            raise UserError(f"Kaggle could not score it ({reason}): fix the file and submit again")
        if time.monotonic() >= deadline:
            raise UserError(f"Kaggle had not scored it after {timeout:g} s: "
                            f"see its score later at {SUBMISSIONS_URL.format(competition)}")
        time.sleep(poll_every)


def submissions(competition):
    """This user's submissions to the competition, newest first, as plain dicts."""
    api = _api()
    with _errors(competition):
        subs = api.competition_submissions(competition) or []
    return [{
        "date": s.date.strftime("%Y-%m-%d %H:%M") if s.date else "",
        "description": s.description or "",
        "status": s.status.name.lower(),
        "public_score": _score(s.public_score),
        "private_score": _score(s.private_score)
    } for s in subs]


def _score(text):
    """Kaggle sends scores as strings; empty while not scored (or not shown)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
