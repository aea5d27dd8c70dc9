"""`flare push`: publish an adapter or merged-model folder to the Hugging Face Hub.

Only files that belong to an adapter or a merged model are uploaded (an allow-list), the token
is never echoed (errors are scrubbed), and a rerun on an unchanged folder makes no commit:
huggingface_hub drops files whose remote oid already matches.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from flare_cli.errors import ConfigError, DataError, HubError

TOKENIZER_FILES = [
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "sentencepiece.bpe.model", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json",
]
ADAPTER_ALLOW = ["README.md", "adapter_config.json", "adapter_model.safetensors", "flare_config.json", "metrics.json"]
MERGED_ALLOW = [
    "README.md", "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass
class PushConfig:
    folder: Path
    repo_id: str
    token: str | None = field(default=None, repr=False)  # never printed
    private: bool | None = None  # None: the Hub's default for the namespace
    revision: str | None = None
    create_pr: bool = False
    commit_message: str | None = None
    dry_run: bool = False


@dataclass
class PushResult:
    repo_id: str
    kind: str  # "adapter" or "merged"
    files: list[str]
    card: str
    dry_run: bool
    card_written: bool = False  # README.md was generated into the folder
    user: str | None = None
    repo_url: str | None = None
    revision: str | None = None
    commit_url: str | None = None
    commit_oid: str | None = None
    pr_url: str | None = None
    changed: bool = False


def folder_kind(folder: Path) -> str:
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file() and any(folder.glob("model*.safetensors")):
        return "merged"
    raise DataError(
        f"{folder} is neither a saved adapter (adapter_config.json) nor a merged model (config.json + safetensors)"
    )


def allow_patterns(kind: str) -> list[str]:
    return (ADAPTER_ALLOW if kind == "adapter" else MERGED_ALLOW) + TOKENIZER_FILES


def files_to_upload(folder: Path, kind: str) -> list[str]:
    patterns = allow_patterns(kind)
    return sorted(p.name for p in folder.iterdir() if p.is_file() and any(fnmatch(p.name, pat) for pat in patterns))


def _card_text(folder: Path, kind: str, repo_id: str) -> tuple[str, bool]:
    """The folder's README.md, or a generated card (second item True) when it has none."""
    readme = folder / "README.md"
    if readme.is_file():
        return readme.read_text(encoding="utf-8"), False
    from flare_cli.export import build_model_card

    card = build_model_card(folder, repo_id=repo_id, relation="adapter" if kind == "adapter" else "merge")
    return str(card), True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return env in {"1", "ON", "YES", "TRUE"} or constants.is_offline_mode()


def run(cfg: PushConfig) -> PushResult:
    folder = Path(cfg.folder)
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    if not _REPO_ID.match(cfg.repo_id):
        raise ConfigError(f"--repo-id must look like user/name, not {cfg.repo_id!r}")
    if cfg.create_pr and cfg.revision not in (None, "main"):
        raise ConfigError("--create-pr opens a pull request against main; drop --revision or --create-pr")
    kind = folder_kind(folder)
    card, generated = _card_text(folder, kind, cfg.repo_id)
    files = files_to_upload(folder, kind)
    if generated:
        files = sorted(set(files) | {"README.md"})
    result = PushResult(repo_id=cfg.repo_id, kind=kind, files=files, card=card, dry_run=cfg.dry_run,
                        revision=cfg.revision or "main")
    if cfg.dry_run:
        return result

    if _offline():
        raise HubError("HF_HUB_OFFLINE is set: cannot reach the Hub (unset it, or use --dry-run)")
    from huggingface_hub import get_token

    token = cfg.token or get_token()
    if not token:
        raise HubError("no Hub token: pass --token, set HF_TOKEN or run `hf auth login`")
    try:
        return _push(cfg, folder, result, token, generated)
    except HubError as err:
        raise HubError(_scrub(str(err), token)) from None


def _push(cfg: PushConfig, folder: Path, result: PushResult, token: str, generated: bool) -> PushResult:
    from huggingface_hub import HfApi

    # HF_ENDPOINT is read at call time (huggingface_hub reads it once at import).
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    with _hub_errors(api.endpoint, token):
        result.user = api.whoami().get("name")
        repo_url = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        result.repo_url = str(repo_url)
        if cfg.revision and cfg.revision != "main":
            api.create_branch(cfg.repo_id, branch=cfg.revision, exist_ok=True)
        head_before = api.repo_info(cfg.repo_id, revision=cfg.revision).sha
    if generated:
        # The card belongs to the adapter folder too: a later push or `flare eval` finds it there.
        _write_atomic(folder / "README.md", result.card)
        result.card_written = True
    with _hub_errors(api.endpoint, token):
        info = api.upload_folder(
            repo_id=cfg.repo_id,
            folder_path=folder,
            allow_patterns=allow_patterns(result.kind),
            revision=cfg.revision,
            create_pr=cfg.create_pr or None,
            commit_message=cfg.commit_message or f"Upload {result.kind} with flare_cli",
        )
    result.commit_url = info.commit_url
    result.commit_oid = info.oid
    result.pr_url = info.pr_url
    result.changed = info.oid != head_before
    return result


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


class _hub_errors:
    """Turn huggingface_hub / HTTP failures into one-line HubErrors without the token."""

    def __init__(self, endpoint: str, token: str):
        self.endpoint = endpoint
        self.token = token

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, HubError):
            return False
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

        if isinstance(exc, OfflineModeIsEnabled):
            message = "HF_HUB_OFFLINE is set: cannot reach the Hub (unset it, or use --dry-run)"
        elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status == 401:
                message = f"the Hub at {self.endpoint} rejected the token (401): check --token, HF_TOKEN or `hf auth login`"
            elif status == 403:
                message = f"the token has no write access here (403 from {self.endpoint})"
            elif isinstance(exc, RepositoryNotFoundError):
                message = f"repository not found on {self.endpoint} (404)"
            else:
                message = f"the Hub at {self.endpoint} answered {status}: {_first_line(exc)}"
        elif isinstance(exc, OSError) or _is_transport_error(exc):
            message = f"cannot reach the Hub at {self.endpoint}: {_first_line(exc)}"
        elif isinstance(exc, ValueError):
            message = f"the Hub refused the upload: {_first_line(exc)}"
        else:
            return False
        raise HubError(_scrub(message, self.token)) from None


def _is_transport_error(exc: BaseException) -> bool:
    # huggingface_hub's HTTP client library is an implementation detail that changed across
    # versions (requests, httpx, httpx2): recognise its connection errors by module.
    return type(exc).__module__.split(".")[0] in {"httpx", "httpx2", "requests", "urllib3"}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
