"""A stand-in for Kaggle's HTTP API, so the tests never touch the network.

How the real client (kaggle 2.2.4) finds it:
- KAGGLE_API_ENVIRONMENT=LOCALHOST makes it send its JSON POSTs to
  http://localhost/api/v1/<Service>/<Method>, e.g. competitions.CompetitionApiService/ListSubmissions
  (it must be set before `import kaggle`: the client reads it into a class attribute);
- HTTP_PROXY=<stub.url> makes requests send every plain-http request, whatever the host,
  to this server as a proxy request (full URL in the request line). So the storage and
  upload URLs the stub hands out (http://storage.kaggle.test/..., http://upload.kaggle.test/...)
  come back here too, with no DNS and no second server.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

RPC_PREFIX = "/api/v1/competitions.CompetitionApiService/"
STORAGE = "http://storage.kaggle.test"
UPLOAD = "http://upload.kaggle.test"


class KaggleStub:
    """Scripted replies, plus a record of every request received. Use as a context manager."""

    def __init__(self):
        self.requests = []            # dicts: method, url, headers, body, json; in arrival order
        self.fail = {}                # RPC name (or "GET" for storage, "PUT" for upload) -> HTTP status
        self.zip_bytes = b""          # what the competition download serves
        self.truncate = False         # announce all of zip_bytes, send half, hang up
        self.uploads = {}             # upload token -> bytes received
        self.statuses = ["COMPLETE"]  # status ListSubmissions reports, one per call; the last repeats
        self.public_score = "0.5"
        self.error_description = None
        self.made = []                # submissions created through the stub, newest first
        self.history = []             # older submissions (API JSON shape) listed after those
        self.tokens = {}              # access token (KAGGLE_API_TOKEN) -> the username it belongs to
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.stub = self
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
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
        return 302, {"Location": f"{STORAGE}/competitions-data/{name}.zip?GoogleAccessId=stub&Signature=x"}, b""

    def StartSubmissionUpload(self, req):
        token = f"blob-{len(self.uploads) + 1}"
        return _json({"token": token, "createUrl": f"{UPLOAD}/upload/{token}"})

    def CreateSubmission(self, req):
        ref = 1000 + len(self.made)
        self.made.insert(0, {"ref": ref, "date": "2024-05-01T12:00:00.000Z", "status": "PENDING",
                             "description": req.get("submissionDescription", ""),
                             "fileName": "submission.csv"})
        return _json({"message": "Successfully submitted to Ultrasound Nerve Segmentation", "ref": ref})

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
        self.server.stub.requests.append({"method": self.command, "url": self.path,
                                          "headers": dict(self.headers), "body": body, "json": parsed})
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
        if method is None or not hasattr(stub, method):
            return self._error(404)
        self._reply(*getattr(stub, method)(req or {}))

    def do_GET(self):
        stub = self.server.stub
        self._record()
        if "GET" in stub.fail:
            return self._error(stub.fail["GET"])
        data = stub.zip_bytes
        if not stub.truncate:
            return self._reply(200, {"Content-Type": "application/zip"}, data)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def do_PUT(self):
        stub = self.server.stub
        body, _ = self._record()
        if "PUT" in stub.fail:
            return self._error(stub.fail["PUT"])
        stub.uploads[urlsplit(self.path).path.rsplit("/", 1)[-1]] = body
        self._reply(200, {}, b"")
