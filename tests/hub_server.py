"""A Hub that lives on 127.0.0.1, for testing uploads with no network.

It speaks the few endpoints `huggingface_hub` uses to create a repo, commit files and read them back
(`create_repo`, `upload_folder`, `ModelCard.validate`, `hf_hub_download`, `from_pretrained`). Files
are committed as base64 "regular" blobs: the pre-upload answer never asks for LFS or Xet storage.

Example:

```python
with LoopbackHub() as hub:
    api = HfApi(endpoint=hub.url, token="hf_loopback")
    api.create_repo("me/tiny", exist_ok=True)
    api.upload_folder(repo_id="me/tiny", folder_path="out")
    assert "config.json" in hub.files("me/tiny")
```
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml

_REPO = r"(?P<repo>[\w.\-]+(?:/[\w.\-]+)?)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "repo_info"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class LoopbackHub:
    """An in-memory model Hub served over HTTP on loopback, in a background thread.

    Args:
        fail_commits (`int`, defaults to 0):
            Answer this many commit requests with HTTP 403 before accepting one, to test what a
            failed upload leaves behind.
    """

    def __init__(self, fail_commits: int = 0):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.fail_commits = fail_commits
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str) -> dict[str, bytes]:
        return self.repos.get(repo_id, {})

    # ---- endpoint handlers: (status, body, headers) --------------------------------------------
    def create_repo(self, body: bytes, **_):
        payload = json.loads(body)
        repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
        with self._lock:
            existed = repo_id in self.repos
            self.repos.setdefault(repo_id, {})
        if existed:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}, {}

    def validate_yaml(self, body: bytes, **_):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.DOTALL)
        metadata = yaml.safe_load(match.group(1)) if match else {}
        if not isinstance(metadata, dict):
            return 400, "metadata is not a mapping", {}
        return 200, {"errors": [], "warnings": []}, {}

    def preupload(self, body: bytes, repo: str, **_):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        files = json.loads(body)["files"]
        answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
        return 200, {"files": answer, "commitOid": self._head(repo)}, {}

    def commit(self, body: bytes, repo: str, rev: str, **_):
        with self._lock:
            if self.fail_commits > 0:
                self.fail_commits -= 1
                return 403, {"error": "You don't have the rights to create a commit in this repo"}, {}
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        header: dict = {}
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                deleted.append(item["value"]["path"])
            else:
                return 400, {"error": f"loopback Hub does not support {item['key']!r} operations"}, {}
        with self._lock:
            self.repos[repo].update(added)
            for path in deleted:
                self.repos[repo].pop(path, None)
            oid = hashlib.sha1(json.dumps(sorted(self.repos[repo])).encode() + body).hexdigest()
            self.commits.append({"repo": repo, "revision": rev, "oid": oid, "summary": header.get("summary"),
                                 "files": sorted(added), "deleted": sorted(deleted)})
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}, {}

    def repo_info(self, repo: str, **_):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        siblings = [{"rfilename": path, "size": len(data)} for path, data in sorted(self.repos[repo].items())]
        return 200, {"id": repo, "modelId": repo, "sha": self._head(repo), "private": False,
                     "siblings": siblings, "tags": []}, {}

    def resolve(self, repo: str, path: str, **_):
        data = self.repos.get(repo, {}).get(unquote(path))
        if data is None:
            return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
        headers = {"X-Repo-Commit": self._head(repo), "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        return 200, data, headers

    def _head(self, repo: str) -> str:
        commits = [c["oid"] for c in self.commits if c["repo"] == repo]
        return commits[-1] if commits else "0" * 40


def _make_handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _dispatch(self, method: str) -> None:
            path = urlparse(self.path).path
            hub.requests.append((method, path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            for route_method, pattern, name in _ROUTES:
                match = pattern.match(path)
                if route_method == method and match:
                    status, payload, headers = getattr(hub, name)(body=body, **match.groupdict())
                    break
            else:
                status, payload, headers = 404, {"error": f"no route for {method} {path}"}, {}
            data = payload if isinstance(payload, bytes) else (
                payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
            self.send_response(status)
            headers.setdefault("Content-Type", "application/json")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

    return Handler
