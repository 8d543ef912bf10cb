"""A stand-in for Kaggle's HTTP API, so the tests never touch the network.

How the real client (kaggle 2.2.4) finds it:
- KAGGLE_API_ENVIRONMENT=LOCALHOST makes it send its JSON POSTs to
  http://localhost/api/v1/<Service>/<Method>, e.g.
  competitions.CompetitionApiService/ListSubmissions or kernels.KernelsApiService/SaveKernel
  (it must be set before `import kaggle`: the client reads it into a class attribute);
  SERVICES says which service each method belongs to, and a method sent to another service
  gets a 404, as on Kaggle;
- HTTP_PROXY=<stub.url> makes requests send every plain-http request, whatever the host,
  to this server as a proxy request (full URL in the request line). So the storage and
  upload URLs the stub hands out (http://storage.kaggle.test/..., http://upload.kaggle.test/...)
  come back here too, with no DNS and no second server.

The stub holds one notebook (kernel): whether it exists yet (a push, SaveKernel, creates it),
the statuses GetKernelSessionStatus reports in turn, and the output files and log that
ListKernelSessionOutput lists, the files served from the storage URLs it hands out.
"""

import io
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

RPC_ROOT = "/api/v1/"
SERVICES = {
    "security.OAuthService": ["IntrospectToken"],
    "competitions.CompetitionApiService": [
        "DownloadDataFiles", "StartSubmissionUpload", "CreateSubmission", "ListSubmissions"
    ],
    "kernels.KernelsApiService": [
        "SaveKernel", "GetKernelSessionStatus", "ListKernelSessionOutput"
    ],
}
SERVICE_OF = {method: service for service, methods in SERVICES.items() for method in methods}
RPC_PREFIX = RPC_ROOT + "competitions.CompetitionApiService/"  # the competitions' RPCs
STORAGE = "http://storage.kaggle.test"
UPLOAD = "http://upload.kaggle.test"
ROOT = Path(__file__).resolve().parents[1]
USER = "kit-tester"
FAKE_KEY = "f4k3k3y0123456789abcdef0123456789"


def rpc_url(method):
    """The URL the client posts `method` to under KAGGLE_API_ENVIRONMENT=LOCALHOST."""
    return f"http://localhost{RPC_ROOT}{SERVICE_OF[method]}/{method}"


def clean_env(tmp_path, proxy):
    """The environment of a user with no Kaggle settings, whose every http request goes to
    `proxy`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KAGGLE_") and k.lower() not in ("http_proxy", "https_proxy",
                                                             "all_proxy", "no_proxy",
                                                             "xdg_config_home")
    }
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / ".kaggle"),
               KAGGLE_API_ENVIRONMENT="LOCALHOST", HTTP_PROXY=proxy, http_proxy=proxy,
               PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    return env


def zip_bytes(files):
    """A zip holding {name: bytes}, in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def competition_zip(files, nested):
    """The zip Kaggle serves for a competition of {path: bytes}: the files as they are
    (train/..., test/..., *.csv), or (nested) train.zip, test.zip and <name>.csv.zip inside."""
    if not nested:
        return zip_bytes(files)
    parts = {}
    for name, data in files.items():
        parts.setdefault(name.split("/")[0] + ".zip", {})[name] = data
    return zip_bytes({part: zip_bytes(members) for part, members in parts.items()})


def tiny_competition(h=20, w=28):
    """{path: bytes} of a small competition in the nerve layout: 2 subjects x 3 frames, test ids
    1-3."""
    import cv2
    import numpy as np

    def tif(image):
        return cv2.imencode(".tif", image)[1].tobytes()  # LZW, as Kaggle's files are

    rng = np.random.default_rng(0)
    files = {}
    for s in (1, 2):
        for n in (1, 2, 3):
            mask = np.zeros((h, w), np.uint8)
            mask[2:2 + n, 3:3 + s] = 255
            files[f"train/{s}_{n}.tif"] = tif(rng.integers(0, 255, (h, w), dtype=np.uint8))
            files[f"train/{s}_{n}_mask.tif"] = tif(mask)
    for i in (1, 2, 3):
        files[f"test/{i}.tif"] = tif(np.full((h, w), i, np.uint8))
    files["sample_submission.csv"] = b"img,pixels\n1,\n2,\n3,\n"
    return files


def user_env(tmp_path, proxy):
    """clean_env() plus a kaggle.json holding USER and FAKE_KEY, as Kaggle's settings page makes
    it."""
    env = clean_env(tmp_path, proxy)
    config = Path(env["KAGGLE_CONFIG_DIR"], "kaggle.json")
    config.parent.mkdir()
    config.write_text(json.dumps({"username": USER, "key": FAKE_KEY}))
    config.chmod(0o600)
    return env


class KaggleStub:
    """Scripted replies, plus a record of every request received. Use as a context manager."""

    def __init__(self):
        self.requests = []  # dicts: method, url, headers, body, json; in arrival order
        self.fail = {}  # RPC name (or "GET" for storage, "PUT" for upload) -> HTTP status
        self.zip_bytes = b""  # what the competition download serves
        self.truncate = False  # announce all of zip_bytes, send half, hang up
        self.uploads = {}  # upload token -> bytes received
        self.statuses = ["COMPLETE"
                         ]  # status ListSubmissions reports, one per call; the last repeats
        self.public_score = "0.5"
        self.error_description = None
        self.made = []  # submissions created through the stub, newest first
        self.history = []  # older submissions (API JSON shape) listed after those
        self.tokens = {}  # access token (KAGGLE_API_TOKEN) -> the username it belongs to
        self.kernels = []  # SaveKernel requests (kaggle kernels push)
        self.kernel_exists = False  # False: GetKernelSessionStatus answers 404 (set by a push)
        # One per GetKernelSessionStatus, the last repeated; a version just pushed is seen
        # running before it ends (kernel/run.py waits for that).
        self.kernel_statuses = ["RUNNING", "COMPLETE"]
        self.kernel_failure = None  # failureMessage sent with an ERROR status
        self.outputs = {}  # the notebook's output files: name -> bytes
        self.kernel_log = ""  # the log ListKernelSessionOutput sends
        self.output_page_size = 20  # files per ListKernelSessionOutput page
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.stub = self
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, args=(0.05, ), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method):
        """The JSON bodies of the RPCs named `method`, in order."""
        return [r["json"] for r in self.requests if r["url"].endswith("/" + method)]

    # ------------------------------------------------------------ the RPCs

    def IntrospectToken(self, req):
        # The client checks an access token with this call before using it.
        user = self.tokens.get(req.get("token"))
        return _json({"active": user is not None, "username": user or ""})

    def DownloadDataFiles(self, req):
        # Kaggle answers with a redirect to a signed storage URL.
        name = req["competitionName"]
        return (302, {
            "Location": f"{STORAGE}/competitions-data/{name}.zip?GoogleAccessId=stub&Signature=x"
        }, b"")

    def StartSubmissionUpload(self, req):
        token = f"blob-{len(self.uploads) + 1}"
        return _json({"token": token, "createUrl": f"{UPLOAD}/upload/{token}"})

    def CreateSubmission(self, req):
        ref = 1000 + len(self.made)
        self.made.insert(
            0, {
                "ref": ref,
                "date": "2024-05-01T12:00:00.000Z",
                "status": "PENDING",
                "description": req.get("submissionDescription", ""),
                "fileName": "submission.csv"
            })
        return _json({
            "message": "Successfully submitted to Ultrasound Nerve Segmentation",
            "ref": ref
        })

    def SaveKernel(self, req):
        self.kernels.append(req)
        self.kernel_exists = True
        slug = req.get("slug", "")
        return _json({
            "ref": f"/code/{slug}",
            "url": f"https://www.kaggle.com/code/{slug}",
            "versionNumber": len(self.kernels)
        })

    def GetKernelSessionStatus(self, req):
        if not self.kernel_exists:
            return _json({"code": 404, "message": "Notebook not found"}, 404)
        statuses = self.kernel_statuses
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        reply = {"status": status}
        if status == "ERROR" and self.kernel_failure:
            reply["failureMessage"] = self.kernel_failure
        return _json(reply)

    def ListKernelSessionOutput(self, req):
        # Pages of output_page_size files; the page token is the index of the page's first file.
        names = list(self.outputs)
        start = int(req.get("pageToken") or 0)
        end = start + self.output_page_size
        files = [{
            "fileName": n,
            "url": f"{STORAGE}/kernel-output/{i}?Signature=x"
        } for i, n in enumerate(names[start:end], start)]
        reply = {"files": files, "log": self.kernel_log}
        if end < len(names):
            reply["nextPageToken"] = str(end)
        return _json(reply)

    def ListSubmissions(self, req):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        for sub in self.made:
            sub["status"] = status
            if status == "COMPLETE":
                sub["publicScore"] = self.public_score
            if status == "ERROR" and self.error_description:
                sub["errorDescription"] = self.error_description
        return _json({"submissions": self.made + self.history})


def _json(obj, status=200):
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.server.stub.requests.append({
            "method": self.command,
            "url": self.path,
            "headers": dict(self.headers),
            "body": body,
            "json": parsed
        })
        return body, parsed

    def _reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status):
        # Kaggle's error bodies are JSON with the status repeated in "code".
        self._reply(*_json({"code": status, "message": f"stub says {status}"}, status))

    def do_POST(self):
        stub = self.server.stub
        _, req = self._record()
        path = urlsplit(self.path).path  # /api/v1/<service>/<method>
        method = path.rsplit("/", 1)[-1] if path.startswith("/api/v1/") else None
        if method in stub.fail:
            return self._error(stub.fail[method])
        if method is None or path != f"{RPC_ROOT}{SERVICE_OF.get(method)}/{method}":
            return self._error(404)
        self._reply(*getattr(stub, method)(req or {}))

    def do_GET(self):
        stub = self.server.stub
        self._record()
        if "GET" in stub.fail:
            return self._error(stub.fail["GET"])
        url = urlsplit(self.path)
        if url.path.startswith("/kernel-output/"):  # the notebook's output files, by index
            data = list(stub.outputs.values())[int(url.path.rsplit("/", 1)[-1])]
            return self._reply(200, {"Content-Type": "application/octet-stream"}, data)
        data = stub.zip_bytes
        if not stub.truncate:
            return self._reply(200, {"Content-Type": "application/zip"}, data)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.close_connection = True

    def do_PUT(self):
        stub = self.server.stub
        body, _ = self._record()
        if "PUT" in stub.fail:
            return self._error(stub.fail["PUT"])
        stub.uploads[urlsplit(self.path).path.rsplit("/", 1)[-1]] = body
        self._reply(200, {}, b"")
