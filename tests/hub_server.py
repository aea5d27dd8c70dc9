"""A small fake Hugging Face Hub on 127.0.0.1 for `flare push` tests.

It implements the endpoints the real `huggingface_hub` client calls for whoami, create_repo,
create_branch, repo_info, preupload, commit and pull requests, keeps repos in memory, and records
every request. Files are always "regular" uploads (base64 in the commit), which is what the Hub
answers for small files. The server listens on a random free port, stops itself after
`lifetime_s` seconds or `max_requests` requests, and is a context manager.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_REPO_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit|revision|branch|discussions)(?:/(?P<rest>.+))?$")


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    headers: dict  # without Authorization
    authorized: bool
    body: bytes
    status: int = 0  # the fake hub's answer


@dataclass
class Branch:
    files: dict[str, bytes]
    commits: list[dict] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, Branch] = field(default_factory=dict)
    prs: list[str] = field(default_factory=list)  # PR refs, index + 1 = PR number


class FakeHub:
    def __init__(self, token: str, user: str = "alice", lifetime_s: float = 60.0, max_requests: int = 500):
        self.token = token
        self.user = user
        self.max_requests = max_requests
        self.repos: dict[str, Repo] = {}
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._stopper = threading.Timer(lifetime_s, self.stop)
        self._stopper.daemon = True

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        self._stopper.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopper.cancel()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ helpers for tests
    def commits(self, repo_id: str, branch: str = "main") -> list[dict]:
        return self.repos[repo_id].branches[branch].commits

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[branch].files

    def paths_hit(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    # ------------------------------------------------------------------ request handling
    def handle(self, method: str, raw_path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        url = urlsplit(raw_path)
        path, query = url.path, parse_qs(url.query)
        auth = headers.pop("authorization", None)
        authorized = auth == f"Bearer {self.token}"
        with self._lock:
            record = Recorded(method, path, query, headers, authorized, body)
            self.requests.append(record)
            if len(self.requests) > self.max_requests:
                record.status, payload = 503, {"error": "fake hub request budget exhausted"}
            elif not authorized:
                record.status, payload = 401, {"error": "Invalid credentials in Authorization header"}
            else:
                record.status, payload = self._route(method, path, query, body)
            return record.status, payload

    def _route(self, method, path, query, body) -> tuple[int, dict]:
        if method == "GET" and path == "/api/whoami-v2":
            return 200, {"type": "user", "name": self.user, "auth": {"type": "access_token"}}
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        bare = re.fullmatch(r"/api/models/([^/]+/[^/]+)", path)
        if bare and method == "GET":  # repo_info without a revision: main
            return self._route(method, f"{path}/revision/main", query, body)
        match = _REPO_API.match(path)
        if not match:
            return 404, {"error": f"fake hub: no route for {method} {path}"}
        repo = self.repos.get(match["repo"])
        if repo is None:
            return 404, {"error": "Repository not found"}
        op, rest = match["op"], unquote(match["rest"] or "")
        if op == "revision" and method == "GET":
            branch = repo.branches.get(rest)
            if branch is None:
                return 404, {"error": f"Invalid rev id: {rest}"}
            return 200, {"id": repo.repo_id, "sha": branch.sha, "private": repo.private,
                         "siblings": [{"rfilename": name} for name in sorted(branch.files)]}
        if op == "branch" and method == "POST":
            if rest in repo.branches:
                return 409, {"error": "Reference already exists"}
            start = repo.branches["main"]
            repo.branches[rest] = Branch(dict(start.files), list(start.commits))
            return 200, {}
        if op == "preupload" and method == "POST":
            branch = repo.branches.get(rest) or repo.branches["main"]
            files = []
            for item in json.loads(body)["files"]:
                remote = branch.files.get(item["path"])
                files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                              "oid": git_blob_sha1(remote) if remote is not None else None})
            return 200, {"files": files, "commitOid": branch.sha}
        if op == "commit" and method == "POST":
            return self._commit(repo, rest, query, body)
        if op == "discussions" and method == "POST" and not rest:
            return 200, {"num": self._open_pr(repo)}
        if op == "discussions" and method == "GET" and rest.isdigit():
            return 200, self._pr_details(repo, int(rest))
        return 404, {"error": f"fake hub: no route for {method} {path}"}

    def _create_repo(self, payload: dict) -> tuple[int, dict]:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        repo = Repo(repo_id, private=payload.get("visibility") == "private")
        main = Branch({".gitattributes": GITATTRIBUTES})
        main.commits.append({"oid": hashlib.sha1(repo_id.encode()).hexdigest(), "summary": "initial commit",
                             "files": [".gitattributes"]})
        repo.branches["main"] = main
        self.repos[repo_id] = repo
        return 200, {"url": url, "name": repo_id}

    def _open_pr(self, repo: Repo) -> int:
        ref = f"refs/pr/{len(repo.prs) + 1}"
        main = repo.branches["main"]
        repo.branches[ref] = Branch(dict(main.files), list(main.commits))
        repo.prs.append(ref)
        return len(repo.prs)

    def _pr_details(self, repo: Repo, num: int) -> dict:
        return {"title": "PR", "num": num, "author": {"name": self.user}, "createdAt": "2026-01-01T00:00:00.000Z",
                "status": "draft", "repo": {"name": repo.repo_id, "type": "model"}, "isPullRequest": True,
                "events": [], "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []}

    def _commit(self, repo: Repo, revision: str, query: dict, body: bytes) -> tuple[int, dict]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        pr_url = None
        if query.get("create_pr") == ["1"]:
            num = self._open_pr(repo)
            revision = repo.prs[num - 1]
            pr_url = f"{self.endpoint}/{repo.repo_id}/discussions/{num}"
        branch = repo.branches.get(revision)
        if branch is None:
            return 404, {"error": f"Invalid rev id: {revision}"}
        changed = []
        for item in lines:
            if item["key"] == "file":
                branch.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                changed.append(item["value"]["path"])
            elif item["key"] == "deletedFile":
                branch.files.pop(item["value"]["path"], None)
                changed.append(item["value"]["path"])
            elif item["key"] != "header":
                return 400, {"error": f"fake hub: unsupported commit entry {item['key']}"}
        oid = hashlib.sha1(f"{branch.sha}{len(branch.commits)}{sorted(changed)}".encode()).hexdigest()
        branch.commits.append({"oid": oid, "summary": header["summary"], "files": sorted(changed)})
        return 200, {"commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": pr_url}


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = hub.handle(self.command, self.path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 404 and payload.get("error") == "Repository not found":
                self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler
