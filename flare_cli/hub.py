"""The Hugging Face Hub: `flare push`, and Hub ids wherever an adapter folder is taken.

`resolve_adapter` is the one place that turns ``user/name[@revision]`` into a local folder (a
snapshot in the Hugging Face cache); eval, merge, load_flare_model and push all go through it.

`flare push` uploads exactly the allow-listed top-level files of an adapter or merged-model folder,
rewritten where needed so that the repo is the trained model on its own (flare_cli/publish.py).
The token is stripped and never echoed (errors are scrubbed of every form of it), and a rerun on
an unchanged folder makes no commit: huggingface_hub drops files whose remote oid already matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from flare_cli.errors import ConfigError, DataError, HubError, first_line, hub_offline
from flare_cli.fsutil import atomic_write_text

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
_HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
OFFLINE_MESSAGE = "HF_HUB_OFFLINE is set: cannot reach the Hub (unset it, or use --dry-run)"


# --------------------------------------------------------------------------- Hub ids as folders


def _endpoint() -> Optional[str]:
    # HF_ENDPOINT is read at call time (huggingface_hub reads it once, at import).
    return os.environ.get("HF_ENDPOINT") or None




def resolve_adapter(ref, *, what: str = "adapter", local_only: bool = False) -> Path:
    """A local adapter folder for ``ref``: the folder itself, or the snapshot of the Hub repo
    ``user/name[@revision]`` (downloaded into the Hugging Face cache, or found there offline)."""
    text = str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DataError(f"{what} {text} is a file, not an adapter folder")
    match = _HUB_REF.match(text)
    # runs/x where ./runs exists is a mistyped local path, not the Hub repo runs/x
    if match is None or (not match["revision"] and Path(text.split("/", 1)[0]).is_dir()):
        raise DataError(f"{what} {text} does not exist (neither a local folder nor a Hub id user/name[@revision])")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = match["repo"], match["revision"]
    offline = local_only or hub_offline()
    try:
        return Path(snapshot_download(repo, revision=revision, endpoint=_endpoint(), local_files_only=offline))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else ("--dry-run contacts nobody" if local_only else
                                                            "the Hub is unreachable")
        raise HubError(f"{what} {text} is no local folder and not in the Hugging Face cache, and {why}: "
                       f"download it first (`hf download {repo}`) or pass a local folder") from None
    except GatedRepoError:
        raise HubError(f"{what} {text} is a gated Hub repo: accept its terms and log in (`hf auth login`)") from None
    except RevisionNotFoundError:
        raise HubError(f"{what} {text}: revision {revision!r} not found on the Hub") from None
    except RepositoryNotFoundError:
        raise HubError(f"{what} {text} is no local folder, and no Hub repo of that name is visible "
                       "(private? log in with `hf auth login`)") from None
    except HfHubHTTPError as err:
        raise HubError(f"cannot download {what} {text}: {first_line(err)}") from None
    except OSError as err:
        raise HubError(f"cannot download {what} {text}: {first_line(err)}") from None


# --------------------------------------------------------------------------- push


@dataclass
class PushConfig:
    folder: Path
    repo_id: str
    token: str | None = field(default=None, repr=False)  # never printed
    private: bool | None = None  # None: keep an existing repo's visibility / the namespace default
    revision: str | None = None
    create_pr: bool = False
    commit_message: str | None = None
    dry_run: bool = False
    base_model: str | None = None  # the base's Hub id, when the adapter was trained on a local folder
    task_adapter: str | None = None  # the stage-1 adapter, when the recorded path does not resolve here
    license: str | None = None  # overrides the licence derived from base, MT model and data


@dataclass
class PushResult:
    repo_id: str
    kind: str  # "adapter" or "merged"
    files: list[str]
    card: str
    dry_run: bool
    card_generated: bool = False  # the folder has no card of its own: one was generated for this push
    user: str | None = None
    repo_url: str | None = None
    revision: str | None = None
    commit_url: str | None = None
    commit_oid: str | None = None
    pr_url: str | None = None
    changed: bool = False
    visibility_changed: str | None = None  # "private" / "public" when an existing repo was switched
    task_adapter: str | None = None  # stage 1: "folded" into the LoRA, "bundled" in task_adapter/, or None
    warnings: list[str] = field(default_factory=list)


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
    """The allowed files at the top of ``folder`` (never anything in a subfolder)."""
    patterns = allow_patterns(kind)
    return sorted(p.name for p in folder.iterdir() if p.is_file() and any(fnmatch(p.name, pat) for pat in patterns))


def _read_card(folder: Path) -> Optional[str]:
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    try:
        return readme.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{readme} is not UTF-8 text (byte {err.start}); save the model card as UTF-8") from None


def _is_peft_template(card: str) -> bool:
    """peft's save_pretrained writes an empty template card (with the local base path): not a card."""
    return "# Model Card for Model ID" in card and "<!-- Provide a quick summary" in card


def _stage(cfg: PushConfig, folder: Path, kind: str, staging: Path, result: PushResult) -> dict:
    """path in repo -> local file, for exactly what the push sends.

    A folder without a README.md of its own gets a card generated from its current state on every
    push (never written into the folder: a saved copy would go stale when metrics.json changes)."""
    from flare_cli.card import REPO_PLACEHOLDER, build_model_card

    files = {name: folder / name for name in files_to_upload(folder, kind)}
    card = original = _read_card(folder)
    keep_card = card is not None and not _is_peft_template(card)
    base_model, base_local = None, None
    if kind == "adapter":
        from flare_cli.publish import stage_adapter

        staged = stage_adapter(folder, files, staging, base_model=cfg.base_model, task_adapter=cfg.task_adapter,
                               local_only=cfg.dry_run)
        files, base_model, base_local = staged.files, staged.base_model, staged.base_local
        result.warnings += staged.warnings
        result.task_adapter = staged.task_adapter
    if not keep_card:
        view = staging if kind == "adapter" else folder  # the card describes what the repo holds
        if kind == "adapter" and "metrics.json" in files:
            shutil.copyfile(files["metrics.json"], staging / "metrics.json")
        card = str(build_model_card(view, repo_id=cfg.repo_id, base_model=base_model, base_path=base_local,
                                    relation="adapter" if kind == "adapter" else "merge",
                                    license=cfg.license, warnings=result.warnings))
    elif cfg.license:
        result.warnings.append(f"--license is ignored: {folder / 'README.md'} is the card; edit its license line")
    if REPO_PLACEHOLDER in card:  # a card `flare merge` wrote before the repo id was known
        card = card.replace(REPO_PLACEHOLDER, cfg.repo_id)
    result.card = card
    result.card_generated = not keep_card
    if card != original:
        atomic_write_text(staging / "README.md", card)
        files["README.md"] = staging / "README.md"
    return dict(sorted(files.items()))


def run(cfg: PushConfig) -> PushResult:
    folder = Path(cfg.folder)
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    if not _REPO_ID.match(cfg.repo_id):
        raise ConfigError(f"--repo-id must look like user/name, not {cfg.repo_id!r}")
    if cfg.create_pr and cfg.revision not in (None, "main"):
        raise ConfigError("--create-pr opens a pull request against main; drop --revision or --create-pr")
    kind = folder_kind(folder)
    result = PushResult(repo_id=cfg.repo_id, kind=kind, files=[], card="", dry_run=cfg.dry_run,
                        revision=cfg.revision or "main")
    staging = Path(tempfile.mkdtemp(prefix="flare-push-"))
    try:
        files = _stage(cfg, folder, kind, staging, result)
        result.files = list(files)
        if cfg.dry_run:
            return result
        if hub_offline():
            raise HubError(OFFLINE_MESSAGE)
        from huggingface_hub import get_token

        raw_token = cfg.token if cfg.token and cfg.token.strip() else get_token()
        token = (raw_token or "").strip()  # `$(cat token.txt)` ends in a newline: never send (or echo) it
        if not token:
            raise HubError("no Hub token: pass --token, set HF_TOKEN or run `hf auth login`")
        try:
            return _push(cfg, result, token, files)
        except HubError as err:
            raise HubError(_scrub(str(err), raw_token)) from None
        except Exception as err:  # anything else may quote a header: never let it reach a traceback
            raise HubError(_scrub(f"push failed ({type(err).__name__}): {first_line(err)}", raw_token)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _push(cfg: PushConfig, result: PushResult, token: str, files: dict) -> PushResult:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=_endpoint(), token=token)
    with _hub_errors(api.endpoint, token):
        result.user = api.whoami().get("name")
        repo_url = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        result.repo_url = str(repo_url)
        if cfg.private is not None and bool(api.repo_info(cfg.repo_id).private) != cfg.private:
            # create_repo leaves an existing repo's visibility alone; --private/--public asked for it
            api.update_repo_settings(cfg.repo_id, private=cfg.private)
            result.visibility_changed = "private" if cfg.private else "public"
        if cfg.revision and cfg.revision != "main":
            api.create_branch(cfg.repo_id, branch=cfg.revision, exist_ok=True)
        head_before = api.repo_info(cfg.repo_id, revision=cfg.revision).sha
    with _hub_errors(api.endpoint, token):
        if cfg.create_pr:
            open_pr = _open_pr_with(api, cfg.repo_id, files)
            if open_pr is not None:  # the same files are already proposed: no second, identical PR
                result.pr_url, result.commit_oid, result.changed = open_pr
                return result
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        info = api.create_commit(
            repo_id=cfg.repo_id,
            operations=operations,
            revision=cfg.revision,
            create_pr=cfg.create_pr or None,
            commit_message=cfg.commit_message or f"Upload {result.kind} with flare_cli",
        )
    result.commit_url = info.commit_url
    result.commit_oid = info.oid
    result.pr_url = info.pr_url
    result.changed = info.oid != head_before
    return result


def _open_pr_with(api, repo_id: str, files: dict) -> Optional[tuple[str, str, bool]]:
    """(url, head oid, False) of an open pull request whose files already equal ``files``."""
    for pr in api.get_repo_discussions(repo_id, discussion_type="pull_request"):
        if pr.status not in ("open", "draft"):
            continue
        remote = {f.path: f for f in api.get_paths_info(repo_id, list(files), revision=pr.git_reference)}
        if all(name in remote and _same_content(path, remote[name]) for name, path in files.items()):
            return pr.url, api.repo_info(repo_id, revision=pr.git_reference).sha, False
    return None


def _same_content(path: Path, remote) -> bool:
    if getattr(remote, "lfs", None) is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return remote.lfs.sha256 == digest.hexdigest()
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)  # git's blob id
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return getattr(remote, "blob_id", None) == digest.hexdigest()


def _secret_forms(token: Optional[str]) -> list[str]:
    """The token as it may appear in a message: raw, stripped, escaped, repr, bytes repr, URL-quoted."""
    if not token:
        return []
    forms = set()
    for value in (token, token.strip()):
        forms |= {value, repr(value)[1:-1], json.dumps(value)[1:-1], repr(value.encode())[2:-1], quote(value, safe="")}
    return sorted((f for f in forms if len(f.strip()) >= 4), key=len, reverse=True)


def _scrub(text: str, token: Optional[str]) -> str:
    for form in _secret_forms(token):
        text = text.replace(form, "***")
    return text


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
            message = OFFLINE_MESSAGE
        elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status == 401:
                message = f"the Hub at {self.endpoint} rejected the token (401): check --token, HF_TOKEN or `hf auth login`"
            elif status == 403:
                message = f"the token has no write access here (403 from {self.endpoint})"
            elif isinstance(exc, RepositoryNotFoundError):
                message = f"repository not found on {self.endpoint} (404)"
            else:
                message = f"the Hub at {self.endpoint} answered {status}: {first_line(exc)}"
        elif isinstance(exc, OSError) or _is_transport_error(exc):
            message = f"cannot reach the Hub at {self.endpoint}: {first_line(exc)}"
        elif isinstance(exc, ValueError):
            message = f"the Hub refused the upload: {first_line(exc)}"
        else:
            return False
        raise HubError(_scrub(message, self.token)) from None


def _is_transport_error(exc: BaseException) -> bool:
    # huggingface_hub's HTTP client library is an implementation detail that changed across
    # versions (requests, httpx, httpx2): recognise its connection errors by module.
    return type(exc).__module__.split(".")[0] in {"httpx", "httpx2", "requests", "urllib3"}


