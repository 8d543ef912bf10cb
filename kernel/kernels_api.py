"""The notebook half of Kaggle's API, for kernel/run.py: push the kit's notebook, follow its
status, fetch its outputs and its log.

Only kernel/run.py, on the user's machine, talks to Kaggle's Kernels API: the notebook itself
never does, so kernel/bundle.py leaves this module out of the bundle. The client, its
credentials and the wording of its errors are kit/kaggle_api.py's, shared with data.py
--download and submission.py --submit: every failure here too is a one-line `UserError`,
never the client's exception text.
"""

import json
import os
import shutil
from pathlib import Path, PurePosixPath

import requests
import urllib3

from kit.files import UserError
from kit.kaggle_api import RULES_URL, _api, _errors, _one_line

NOTEBOOK_URL = "https://www.kaggle.com/code/{}"

# Friendly accelerator names -> Kaggle's machine shapes, as kagglesdk documents them
# (ApiSaveKernelRequest.machine_shape); NvidiaTeslaT4 is the editor's "GPU T4 x2".
# None: no accelerator, which Kaggle gives when no shape is named and enable_gpu is false.
# No TPU: the kit has no TPU code path, so a TPU machine would train on its CPUs.
MACHINE_SHAPES = {"t4x2": "NvidiaTeslaT4", "p100": "NvidiaTeslaP100", "cpu": None}

# ---------------------------------------------------------------- push


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


# ---------------------------------------------------------------- follow


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


# ---------------------------------------------------------------- outputs and log


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
