"""A small fake Hugging Face Hub on 127.0.0.1 for `flare push` tests.

It implements the endpoints the real `huggingface_hub` client calls for whoami, create_repo,
create_branch, repo_info, repo settings (visibility), preupload, commit, pull requests (open, list),
paths-info, tree listing and file downloads (`snapshot_download`), keeps repos in memory, and
records every request. Reads of a public repo need no token, as on the Hub. Files are always "regular" uploads (base64 in the commit), which is what the Hub
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
_REPO_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit|revision|branch|discussions|settings|paths-info|tree)"
    r"(?:/(?P<rest>.+))?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


# A subset of the Hub's model-card metadata rules (https://huggingface.co/docs/hub/model-cards).
HUB_LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "llama2", "llama3",
                "llama3.1", "llama3.2", "llama3.3", "gemma", "openrail", "bsd-3-clause", "gpl-3.0", "other"}
BASE_MODEL_RELATIONS = {"adapter", "merge", "quantized", "finetune"}
PIPELINE_TAGS = {"text-generation", "text-classification", "question-answering", "translation", "text2text-generation"}


def validate_card_metadata(card_text: str) -> list[str]:
    """The errors the Hub would report for a card's YAML front matter (the rules flare_cli must meet)."""
    import yaml

    match = re.match(r"^---\n(.*?)\n---\n", card_text, re.S)
    if not match:
        return []  # a card without metadata is allowed
    meta = yaml.safe_load(match.group(1)) or {}
    errors = []
    if meta.get("license") is not None and meta["license"] not in HUB_LICENSES:
        errors.append(f"license: {meta['license']!r} is not a Hub licence id")
    for lang in meta.get("language") or []:
        if not re.fullmatch(r"[a-z]{2,3}", str(lang)):
            errors.append(f"language: {lang!r} is not an ISO 639-1/639-3 code")
    for base in [meta["base_model"]] if isinstance(meta.get("base_model"), str) else meta.get("base_model") or []:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*|[A-Za-z0-9][\w.-]*", base):
            errors.append(f"base_model: {base!r} is not a Hub model id")
    if meta.get("base_model_relation") is not None:
        if meta["base_model_relation"] not in BASE_MODEL_RELATIONS:
            errors.append(f"base_model_relation: {meta['base_model_relation']!r} is unknown")
        if not meta.get("base_model"):
            errors.append("base_model_relation without base_model")
    if meta.get("pipeline_tag") is not None and meta["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f"pipeline_tag: {meta['pipeline_tag']!r} is unknown")
    for dataset in meta.get("datasets") or []:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*|[A-Za-z0-9][\w.-]*", str(dataset)):
            errors.append(f"datasets: {dataset!r} is not a Hub dataset id")
    return errors


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
        self.snapshots: dict[str, dict[str, bytes]] = {}  # commit oid -> files at that commit
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
    def handle(self, method: str, raw_path: str, headers: dict, body: bytes) -> tuple[int, object]:
        url = urlsplit(raw_path)
        path, query = url.path, parse_qs(url.query)
        auth = headers.pop("authorization", None)
        authorized = auth == f"Bearer {self.token}"
        with self._lock:
            record = Recorded(method, path, query, headers, authorized, body)
            self.requests.append(record)
            if len(self.requests) > self.max_requests:
                record.status, payload = 503, {"error": "fake hub request budget exhausted"}
            elif not authorized and (auth is not None or not self._public_read(method, path)) \
                    and path != "/api/validate-yaml":  # the Hub validates cards anonymously
                record.status, payload = 401, {"error": "Invalid credentials in Authorization header"}
            else:
                record.status, payload = self._route(method, path, query, body)
            return record.status, payload

    def _public_read(self, method: str, path: str) -> bool:
        match = _RESOLVE.match(path) or _REPO_API.match(path) or re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)", path)
        repo = self.repos.get(unquote(match["repo"])) if match else None
        return method in ("GET", "HEAD") and repo is not None and not repo.private

    def _tree(self, revision: str, repo: Repo) -> dict[str, bytes] | None:
        if revision in repo.branches:
            return repo.branches[revision].files
        return self.snapshots.get(revision)

    def _route(self, method, path, query, body) -> tuple[int, object]:
        resolve = _RESOLVE.match(path)
        if resolve and method in ("GET", "HEAD"):
            repo = self.repos.get(resolve["repo"])
            files = self._tree(unquote(resolve["rev"]), repo) if repo else None
            name = unquote(resolve["path"])
            if files is None or name not in files:
                return 404, {"error": "Entry not found"}
            commit = self._commit_of(repo, unquote(resolve["rev"]))
            return 200, _File(files[name], commit)
        if method == "GET" and path == "/api/whoami-v2":
            return 200, {"type": "user", "name": self.user, "auth": {"type": "access_token"}}
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            errors = validate_card_metadata(json.loads(body)["content"])
            return (400, {"error": "; ".join(errors)}) if errors else (200, {"errors": [], "warnings": []})
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
            files = self._tree(rest, repo)
            if files is None:
                return 404, {"error": f"Invalid rev id: {rest}"}
            return 200, {"id": repo.repo_id, "sha": self._commit_of(repo, rest), "private": repo.private,
                         "siblings": [{"rfilename": name} for name in sorted(files)]}
        if op == "settings" and method == "PUT":
            settings = json.loads(body)
            if "visibility" in settings:
                repo.private = settings["visibility"] == "private"
            return 200, {}
        if op in ("tree", "paths-info"):
            revision = unquote((match["rest"] or "").partition("/")[0])
            files = self._tree(revision, repo)
            if files is None:
                return 404, {"error": f"Invalid rev id: {revision}"}
            if op == "tree":
                names = sorted(files)
            else:
                form = parse_qs(body.decode()) if not body.startswith(b"{") else json.loads(body)
                names = [n for n in form.get("paths", []) if n in files]
            return 200, [{"type": "file", "path": n, "size": len(files[n]), "oid": git_blob_sha1(files[n])}
                         for n in names]
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
        if op == "discussions" and method == "GET" and not rest:
            prs = [self._pr_details(repo, num) for num in range(1, len(repo.prs) + 1)]
            if query.get("type") == ["discussion"]:
                prs = []
            return 200, {"discussions": prs, "count": len(prs), "start": 0, "numItemsPerPage": 50}
        if op == "discussions" and method == "GET" and rest.isdigit():
            return 200, self._pr_details(repo, int(rest))
        return 404, {"error": f"fake hub: no route for {method} {path}"}

    def _commit_of(self, repo: Repo, revision: str) -> str:
        return repo.branches[revision].sha if revision in repo.branches else revision

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
        self.snapshots[main.sha] = dict(main.files)
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
                "status": "open", "repo": {"name": repo.repo_id, "type": "model"}, "isPullRequest": True,
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
        self.snapshots[oid] = dict(branch.files)
        return 200, {"commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": pr_url}


@dataclass
class _File:
    content: bytes
    commit: str


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = hub.handle(self.command, self.path, headers, body)
            self.send_response(status)
            if isinstance(payload, _File):  # a download: the headers hf_hub_download reads
                data = payload.content
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("X-Repo-Commit", payload.commit)
                self.send_header("ETag", f'"{git_blob_sha1(data)}"')
            else:
                data = json.dumps(payload).encode()
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 404 and payload.get("error") == "Repository not found":
                self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    return Handler


def hermetic_hub_env(monkeypatch, endpoint: str, cache_dir) -> None:
    """Point huggingface_hub at `endpoint` with an empty cache, whatever HF_* / TRANSFORMERS_*
    variables the user exported (HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, ...) and
    whatever token `hf auth login` stored. huggingface_hub reads some of them once, at import, so
    its constants are patched as well."""
    import os
    from pathlib import Path

    import huggingface_hub.constants as constants

    for var in list(os.environ):
        if var.startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_")) and var != "HF_HOME":
            monkeypatch.delenv(var)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    cache = Path(cache_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cache / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(cache / "no-stored-tokens"))
    import huggingface_hub.hf_api

    # the module-level HfApi() behind huggingface_hub.file_exists & co. took its endpoint at import
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(cache / "agent-harnesses.json"), raising=False)
    try:  # huggingface_hub >= 2.3 fetches an agent registry from the endpoint once per process: not here
        import huggingface_hub.utils._detect_agent as detect

        monkeypatch.setattr(detect, "_registry", detect._EMPTY_REGISTRY)
    except (ImportError, AttributeError):
        pass
