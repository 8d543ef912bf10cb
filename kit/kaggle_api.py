"""Everything that talks to Kaggle: download the competition zip, submit, list submissions,
push the kit's notebook, follow it and fetch its outputs.

All calls go through the official `kaggle` client (kaggle==2.2.4). Its failures become
one-line `UserError`s worded here, never the client's exception text, so that no
request detail (and never a credential) ends up on screen.
"""

import contextlib
import functools
import io
import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path, PurePosixPath

import requests
import urllib3

from kit.files import UserError

log = logging.getLogger(__name__)

RULES_URL = "https://www.kaggle.com/competitions/{}/rules"
SUBMISSIONS_URL = "https://www.kaggle.com/competitions/{}/submissions"
NOTEBOOK_URL = "https://www.kaggle.com/code/{}"
TOKEN_HELP = ("create a token at https://www.kaggle.com/settings (API section) and save it as "
              "~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json) with chmod 600, "
              "or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN")
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
        raise UserError(
            f"no Kaggle credentials found (looked for {KaggleApi.config}): {TOKEN_HELP}") from None
    if "chmod 600" in said.getvalue():  # the client's warning that kaggle.json is world-readable
        log.warning(f"warning: {api.config} is readable by other users: run chmod 600 {api.config}")
    api.args = [a for a in api.args if a not in ("--verbose", "-v")]
    return api


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


# ---------------------------------------------------------------- notebooks

# Friendly accelerator names -> Kaggle's machine shapes, as kagglesdk documents them
# (ApiSaveKernelRequest.machine_shape); NvidiaTeslaT4 is the editor's "GPU T4 x2".
# None: no accelerator, which Kaggle gives when no shape is named and enable_gpu is false.
# No TPU: the kit has no TPU code path, so a TPU machine would train on its CPUs.
MACHINE_SHAPES = {"t4x2": "NvidiaTeslaT4", "p100": "NvidiaTeslaP100", "cpu": None}


def machine_shape(accelerator):
    """Kaggle's machine shape for a friendly accelerator name (None for cpu); a UserError,
    naming the known ones, for any other name."""
    try:
        return MACHINE_SHAPES[accelerator.lower()]
    except KeyError:
        known = ", ".join(MACHINE_SHAPES)
        raise UserError(f"unknown accelerator {accelerator!r}: use one of {known}") from None


def accelerator_settings(accelerator):
    """kernel-metadata.json's fields that ask for this accelerator."""
    shape = machine_shape(accelerator)
    return {"machine_shape": shape, "enable_gpu": shape is not None, "enable_tpu": False}


def push_kernel(folder, accelerator=None):
    """Push the notebook in `folder` (kernel-metadata.json and its code file) as a new version,
    which Kaggle then runs; accelerator: a Kaggle machine shape, None for what the metadata says.
    Returns the version number (None if Kaggle did not give one)."""
    folder = Path(folder)
    kernel = json.loads((folder / "kernel-metadata.json").read_text())["id"]
    api = _api()
    try:
        with _errors(competition=None, kernel=kernel):
            result = api.kernels_push(str(folder), acc=accelerator)
    except ValueError as e:  # the client's checks of the metadata, made before any request
        raise UserError(f"the kaggle client refused to push {folder}: {_one_line(e)}") from None
    if result.error:
        raise UserError(f"Kaggle did not accept notebook {kernel}: {_one_line(result.error)}")
    if result.invalid_competition_sources:
        # The version runs all the same, without the data: say so now, not hours later.
        names = ", ".join(result.invalid_competition_sources)
        raise UserError(f"notebook {kernel} was pushed, but Kaggle did not attach the competition "
                        f"{names}: accept its rules at {RULES_URL.format(names)}, then run again")
    return result.version_number


def _kernels_rpc(kernel, method, request, missing_ok=False):
    """Call KernelsApiService.<method> itself rather than the client's kernels_status or
    kernels_output: those turn 401 and 403 alike into a ValueError about the slug.
    missing_ok: None, not an error, when Kaggle answers 403 or 404 (no such notebook yet)."""
    api = _api()
    request.user_name, request.kernel_slug = kernel.split("/")
    with _errors(competition=None, kernel=kernel):
        try:
            with api.build_kaggle_client() as client:
                return getattr(client.kernels.kernels_api_client, method)(request)
        except requests.HTTPError as e:
            code = e.response.status_code if e.response is not None else None
            if missing_ok and code in (403, 404):
                return None
            raise


def kernel_status(kernel, missing_ok=False):
    """(status, failure message) of the notebook's latest version; status in lower case:
    queued, running, complete, error, cancel_requested, cancel_acknowledged, new_script.
    missing_ok: (None, None) for a notebook Kaggle does not know (or will not show)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest
    reply = _kernels_rpc(kernel, "get_kernel_session_status", ApiGetKernelSessionStatusRequest(),
                         missing_ok)
    if reply is None:
        return None, None
    return reply.status.name.lower(), _one_line(reply.failure_message or "") or None


def kernel_output(kernel, dest):
    """Download the latest version's output files into `dest`, which then holds them and
    nothing else, and its log as <slug>.log. Returns (the files' relative paths, the log)."""
    dest = Path(dest)
    listed, log_text = _list_kernel_output(kernel)
    names = [_safe_name(name, dest) for name, _ in listed]  # all checked before any download
    partial = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # what a killed run was downloading
    partial.mkdir(parents=True)
    try:
        for name, (_, url) in zip(names, listed):
            _fetch(url, partial / name, kernel)
        if log_text:
            (partial / f"{kernel.split('/')[1]}.log").write_text(log_text)
        _replace_folder(partial, dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return names, log_text


def kernel_log(kernel):
    """The latest version's log, as Kaggle keeps it (see log_lines), without its files."""
    return _list_kernel_output(kernel)[1]


def _list_kernel_output(kernel):
    """[(file name, download URL)] of the output, every page, and the log's text."""
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest
    listed, log_text, token = [], None, None
    while True:
        request = ApiListKernelSessionOutputRequest()
        request.page_token = token
        reply = _kernels_rpc(kernel, "list_kernel_session_output", request)
        listed += [(f.file_name, f.url) for f in reply.files or []]
        log_text = log_text if log_text is not None else reply.log or ""
        token = reply.next_page_token
        if not token:
            return listed, log_text


def _safe_name(name, dest):
    """A listed file name as a relative path, refused if it would land outside dest."""
    path = PurePosixPath(name or "")
    if not path.parts or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise UserError(f"Kaggle listed an output file named {name!r}, which would land outside "
                        f"{dest}: refusing to download the outputs")
    return str(path)


def _fetch(url, path, kernel):
    """One output file from its signed storage URL: plain requests, so no credentials go along."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _errors(competition=None, kernel=kernel), \
                requests.get(url, stream=True, timeout=60) as reply:
            reply.raise_for_status()
            with open(path, "wb") as f:
                for chunk in reply.iter_content(1 << 20):
                    f.write(chunk)
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError):
        raise UserError(f"the download of {kernel}'s output {path.name} was cut short: "
                        "run again") from None


def _replace_folder(new, dest):
    """Put folder `new` in dest's place, the old dest removed only once new is there."""
    old = dest.parent / f".{dest.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def log_lines(log_text):
    """The lines a notebook printed, from Kaggle's log: a JSON list of {stream_name, time, data}
    events, or plain text."""
    try:
        events = json.loads(log_text)
    except (ValueError, TypeError):
        events = None
    if isinstance(events, list):
        text = "".join(str(e.get("data", "")) for e in events if isinstance(e, dict))
    else:
        text = log_text or ""
    return [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
