"""`flare push` with the real huggingface_hub client against the fake Hub in tests/hub_server.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from flare_cli.cli import app
from hub_server import FakeHub, hermetic_hub_env

TOKEN = "hf_FakeSecretToken0123456789abcdef"
REPO = "alice/flare-qa-sw"
ADAPTER_FILES = {"README.md", "adapter_config.json", "adapter_model.safetensors", "flare_config.json",
                 "metrics.json", "tokenizer_config.json"}
runner = CliRunner()


@pytest.fixture
def adapter(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": "meta-llama/Llama-3.1-8B", "r": 8, "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
    }))
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.ones(8, 32)},
              str(folder / "adapter_model.safetensors"))
    (folder / "flare_config.json").write_text(json.dumps({
        "flare_cli_version": "0.1.0", "method": "flare", "fusion": "add_relu", "task": "qa", "lang": "sw",
        "mt_model": "facebook/nllb-200-distilled-600M", "base_model": "meta-llama/Llama-3.1-8B",
    }))
    (folder / "metrics.json").write_text(json.dumps({"metric": "exact_match", "value": 0.61, "n": 500,
                                                     "task": "qa", "lang": "sw", "method": "flare"}))
    (folder / "tokenizer_config.json").write_text("{}")
    # Not part of an adapter: must never be uploaded.
    (folder / "optimizer.pt").write_bytes(b"\0" * 64)
    (folder / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (folder / "notes.txt").write_text("scratch")
    return folder


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub(token=TOKEN) as server:
        hermetic_hub_env(monkeypatch, server.endpoint, tmp_path / "hf-cache")
        yield server


def push(*args, token=TOKEN):
    argv = ["push", *map(str, args)] + (["--token", token] if token else [])
    return runner.invoke(app, argv, env={"COLUMNS": "500"})


def err(res) -> str:
    return res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""


def test_push_uploads_allow_listed_files_and_card(hub, adapter):
    res = push("--folder", adapter, "--repo-id", REPO, "--private", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    files = hub.files(REPO)
    assert set(files) == ADAPTER_FILES | {".gitattributes"}
    assert files["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()
    assert hub.repos[REPO].private is True
    head = hub.commits(REPO)[-1]
    assert out["commit_url"] == f"{hub.endpoint}/{REPO}/commit/{head['oid']}" and out["changed"] is True
    assert head["summary"] == "Upload adapter with flare_cli"
    assert hub.paths_hit()[0] == "GET /api/whoami-v2" and out["user"] == "alice"
    assert [r.status for r in hub.requests] == [200] * len(hub.requests)

    card = files["README.md"].decode()
    assert out["card_generated"] is True and card == out["card"]
    assert not (adapter / "README.md").exists()  # the folder stays as training left it
    assert "base_model: meta-llama/Llama-3.1-8B" in card and "base_model_relation: adapter" in card
    assert "library_name: peft" in card and "license: cc-by-nc-4.0" in card
    assert "value: 0.61" in card and "facebook/nllb-200-distilled-600M" in card


def test_rerun_makes_no_empty_commit(hub, adapter):
    assert push("--folder", adapter, "--repo-id", REPO).exit_code == 0
    n_commits = len(hub.commits(REPO))
    res = push("--folder", adapter, "--repo-id", REPO, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(hub.commits(REPO)) == n_commits and out["changed"] is False
    assert out["commit_oid"] == hub.commits(REPO)[-1]["oid"]
    res = push("--folder", adapter, "--repo-id", REPO)
    assert "is up to date; no commit made" in res.stdout

    (adapter / "metrics.json").write_text(json.dumps({"metric": "exact_match", "value": 0.63}))
    assert push("--folder", adapter, "--repo-id", REPO, "-m", "new metrics").exit_code == 0
    # the generated card follows the new metrics: it is part of the commit
    assert hub.commits(REPO)[-1] == {**hub.commits(REPO)[-1], "summary": "new metrics",
                                     "files": ["README.md", "metrics.json"]}
    assert "value: 0.63" in hub.files(REPO)["README.md"].decode()


def test_revision_branch_is_created_and_reused(hub, adapter):
    res = push("--folder", adapter, "--repo-id", REPO, "--revision", "dev")
    assert res.exit_code == 0, res.output
    assert set(hub.files(REPO, "dev")) == ADAPTER_FILES | {".gitattributes"}
    assert set(hub.files(REPO, "main")) == {".gitattributes"}
    assert "POST /api/models/alice/flare-qa-sw/branch/dev" in hub.paths_hit()
    assert {r.status for r in hub.requests} == {200}
    before = len(hub.commits(REPO, "dev"))
    res = push("--folder", adapter, "--repo-id", REPO, "--revision", "dev")
    assert res.exit_code == 0, res.output
    assert len(hub.commits(REPO, "dev")) == before


def test_create_pr_leaves_main_alone(hub, adapter):
    res = push("--folder", adapter, "--repo-id", REPO, "--create-pr", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["pr_url"] == f"{hub.endpoint}/{REPO}/discussions/1"
    assert set(hub.files(REPO, "refs/pr/1")) == ADAPTER_FILES | {".gitattributes"}
    assert set(hub.files(REPO, "main")) == {".gitattributes"}


def test_token_never_leaks(hub, adapter, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    res = push("--folder", adapter, "--repo-id", REPO, "--json", token=None)
    assert res.exit_code == 0, res.output
    bad = push("--folder", adapter, "--repo-id", REPO, token=TOKEN[:-1] + "X")  # rejected token, error path
    assert bad.exit_code == 1
    assert all(r.authorized for r in hub.requests[:-1])  # the HF_TOKEN was used

    for text in (res.stdout, res.stderr, bad.stdout, bad.stderr):
        assert TOKEN not in text and TOKEN[:-1] not in text
    for path in adapter.iterdir():
        if path.name != ".env":  # the user's own file, which we must not upload
            assert TOKEN not in path.read_text(errors="ignore")
    for r in hub.requests:
        seen = r.path + json.dumps(r.query) + json.dumps(r.headers) + r.body.decode(errors="ignore")
        assert TOKEN not in seen and TOKEN[:-1] not in seen
    assert all(TOKEN.encode() not in content for content in hub.files(REPO).values())


def test_rejected_token_is_one_clear_line(hub, adapter):
    res = push("--folder", adapter, "--repo-id", REPO, token="hf_wrong")
    assert res.exit_code == 1
    assert err(res) == (f"error: the Hub at {hub.endpoint} rejected the token (401): "
                        "check --token, HF_TOKEN or `hf auth login`")
    assert hub.paths_hit() == ["GET /api/whoami-v2"] and REPO not in hub.repos


def test_offline_mode_makes_no_request(adapter, monkeypatch):
    with FakeHub(token=TOKEN) as server:
        hermetic_hub_env(monkeypatch, server.endpoint, adapter.parent / "hf-cache")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on an air-gapped cluster
        res = push("--folder", adapter, "--repo-id", REPO)
        assert res.exit_code == 1
        assert err(res) == "error: HF_HUB_OFFLINE is set: cannot reach the Hub (unset it, or use --dry-run)"
        assert server.requests == []


def test_missing_token(hub, adapter):
    res = push("--folder", adapter, "--repo-id", REPO, token=None)
    assert res.exit_code == 1
    assert err(res) == "error: no Hub token: pass --token, set HF_TOKEN or run `hf auth login`"
    assert hub.requests == []


def test_unreachable_hub(adapter, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hermetic_hub_env(monkeypatch, f"http://127.0.0.1:{port}", adapter.parent / "hf-cache")
    res = push("--folder", adapter, "--repo-id", REPO)
    assert res.exit_code == 1
    assert err(res).startswith(f"error: cannot reach the Hub at http://127.0.0.1:{port}: ")


def test_dry_run_lists_files_and_card_offline(adapter):
    res = push("--folder", adapter, "--repo-id", REPO, "--dry-run", token=None)
    assert res.exit_code == 0, res.output
    listed = [line.strip() for line in res.stdout.split("--- README.md ---")[0].splitlines()[1:]]
    assert set(listed) == ADAPTER_FILES
    assert "base_model_relation: adapter" in res.stdout
    assert not (adapter / "README.md").exists()  # a dry run writes nothing


def test_merged_folder_allow_list(hub, tmp_path):
    folder = tmp_path / "merged"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                 "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
                 "chat_template.jinja", "README.md", "training_args.bin", "pytorch_model.bin"):
        (folder / name).write_text("{}")
    res = push("--folder", folder, "--repo-id", "alice/merged", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kind"] == "merged"
    assert set(hub.files("alice/merged")) == {".gitattributes", "config.json", "generation_config.json",
                                              "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                              "model.safetensors.index.json", "tokenizer.json", "chat_template.jinja",
                                              "README.md"}


def test_usage_errors(adapter, tmp_path):
    res = push("--folder", adapter, "--repo-id", "no-namespace")
    assert res.exit_code == 2 and "--repo-id must look like user/name" in err(res)
    res = push("--folder", adapter, "--repo-id", REPO, "--create-pr", "--revision", "dev")
    assert res.exit_code == 2 and "--create-pr opens a pull request against main" in err(res)
    res = push("--folder", tmp_path / "nowhere", "--repo-id", REPO)
    assert res.exit_code == 2 and "does not exist" in err(res)
    (tmp_path / "empty").mkdir()
    res = push("--folder", tmp_path / "empty", "--repo-id", REPO)
    assert res.exit_code == 2 and "neither a saved adapter" in err(res)


def test_without_hf_xet_same_result(hub, adapter, monkeypatch):
    """huggingface_hub's single-commit path (no hf_xet installed): create_commit + validate-yaml."""
    import huggingface_hub._commit_api
    import huggingface_hub.hf_api

    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    monkeypatch.setattr(huggingface_hub._commit_api, "is_xet_available", lambda: False)
    res = push("--folder", adapter, "--repo-id", REPO, "--json")
    assert res.exit_code == 0, res.output
    assert set(hub.files(REPO)) == ADAPTER_FILES | {".gitattributes"}
    assert "POST /api/validate-yaml" in hub.paths_hit()  # proof the legacy path ran
    n_commits = len(hub.commits(REPO))
    res = push("--folder", adapter, "--repo-id", REPO, "--json")
    assert json.loads(res.stdout)["changed"] is False and len(hub.commits(REPO)) == n_commits
    res = push("--folder", adapter, "--repo-id", REPO, "--create-pr", "--json")
    assert res.exit_code == 0, res.output
    # Nothing changed: no PR is opened either.
    assert json.loads(res.stdout)["pr_url"] is None and hub.repos[REPO].prs == []


# -- issue 22: the token, the allow-list, visibility, PRs, the card's paths, bad READMEs -----------------

def _all_forms(token: str) -> list[str]:
    stripped = token.strip()
    return [stripped, repr(token), repr(token.encode()), json.dumps(token), repr(stripped), stripped[:-1]]


@pytest.mark.parametrize("given", [TOKEN + "\n", f"  {TOKEN}\r\n", f"\t{TOKEN} "])
def test_token_with_whitespace_is_stripped_and_works(hub, adapter, given):
    res = push("--folder", adapter, "--repo-id", REPO, "--json", token=given)
    assert res.exit_code == 0, res.output
    assert all(r.authorized for r in hub.requests)
    for form in _all_forms(given):
        assert form not in res.stdout + res.stderr


@pytest.mark.parametrize("debug", [None, "1"])
def test_token_canary_never_leaks_from_errors(hub, adapter, monkeypatch, debug):
    """An error that quotes the token in any form (as httpx's 'Illegal header value b'Bearer hf_..\\n''
    did) reaches the user scrubbed, also with FLARE_DEBUG=1 (which shows the traceback)."""
    import traceback

    import huggingface_hub

    canary = TOKEN + "\n"

    def leaky_whoami(self, *args, **kwargs):
        raise ValueError(f"Illegal header value {('Bearer ' + canary).encode()!r}; sent {canary!r} / {json.dumps(canary)}")

    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", leaky_whoami)
    if debug:
        monkeypatch.setenv("FLARE_DEBUG", debug)
    res = push("--folder", adapter, "--repo-id", REPO, token=canary)
    assert res.exit_code != 0
    shown = res.stdout + res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        shown += "".join(traceback.format_exception(res.exception))
    assert "Illegal header value" in shown  # the error itself is reported...
    for form in _all_forms(canary):
        assert form not in shown  # ...without the token in any form
    assert "***" in shown
    if not debug:
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1


def test_only_top_level_allowed_files_and_dry_run_lists_exactly_them(hub, tmp_path):
    folder = tmp_path / "merged"
    (folder / "model-old").mkdir(parents=True)
    for name in ("config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json", "README.md"):
        (folder / name).write_text("{}")
    (folder / "model-old" / "secret-of-1.safetensors").write_text("secret")  # matches model-*-of-*.safetensors
    (folder / "model-old" / "README.md").write_text("old card")
    dry = push("--folder", folder, "--repo-id", "alice/merged", "--dry-run", "--json", token=None)
    assert dry.exit_code == 0, dry.output
    res = push("--folder", folder, "--repo-id", "alice/merged", "--json")
    assert res.exit_code == 0, res.output
    sent = set(hub.files("alice/merged")) - {".gitattributes"}
    assert sent == set(json.loads(dry.stdout)["files"]) == set(json.loads(res.stdout)["files"]) == {
        "config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json", "README.md"}


def test_private_flag_switches_an_existing_public_repo(hub, adapter):
    assert push("--folder", adapter, "--repo-id", REPO, "--public").exit_code == 0
    assert hub.repos[REPO].private is False
    res = push("--folder", adapter, "--repo-id", REPO, "--private", "--json")
    assert res.exit_code == 0, res.output
    assert hub.repos[REPO].private is True and json.loads(res.stdout)["visibility_changed"] == "private"
    assert f"{REPO} was switched to private" in res.stderr
    res = push("--folder", adapter, "--repo-id", REPO, "--json")  # no flag: the visibility is kept
    assert hub.repos[REPO].private is True and json.loads(res.stdout)["visibility_changed"] is None


def test_create_pr_twice_on_an_unchanged_folder_opens_one_pr(hub, adapter):
    assert push("--folder", adapter, "--repo-id", REPO, "--create-pr").exit_code == 0
    assert len(hub.repos[REPO].prs) == 1
    res = push("--folder", adapter, "--repo-id", REPO, "--create-pr")
    assert res.exit_code == 0, res.output
    assert len(hub.repos[REPO].prs) == 1
    assert f"an open pull request already proposes these files: {hub.endpoint}/{REPO}/discussions/1" in res.stdout
    (adapter / "metrics.json").write_text(json.dumps({"metric": "exact_match", "value": 0.7}))
    res = push("--folder", adapter, "--repo-id", REPO, "--create-pr", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["pr_url"].endswith("/discussions/2")


def test_local_base_path_is_never_published(hub, adapter, tmp_path):
    base = tmp_path / "models" / "llama-local"
    base.mkdir(parents=True)
    for name in ("adapter_config.json", "flare_config.json"):
        data = json.loads((adapter / name).read_text())
        data["base_model_name_or_path" if name == "adapter_config.json" else "base_model"] = str(base)
        (adapter / name).write_text(json.dumps(data))
    res = push("--folder", adapter, "--repo-id", REPO, "--json")
    assert res.exit_code == 0, res.output
    assert any("--base-model" in w for w in json.loads(res.stdout)["warnings"])
    for name, content in hub.files(REPO).items():
        assert str(tmp_path).encode() not in content, name
    assert json.loads(hub.files(REPO)["adapter_config.json"])["base_model_name_or_path"] is None

    res = push("--folder", adapter, "--repo-id", REPO, "--base-model", "meta-llama/Llama-3.1-8B")
    assert res.exit_code == 0, res.output
    card = hub.files(REPO)["README.md"].decode()
    assert "base_model: meta-llama/Llama-3.1-8B" in card and str(tmp_path) not in card
    assert json.loads(hub.files(REPO)["adapter_config.json"])["base_model_name_or_path"] == "meta-llama/Llama-3.1-8B"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)  # local copy kept


def test_readme_that_is_not_utf8_is_one_line(adapter):
    (adapter / "README.md").write_bytes(b"---\nlicense: mit\n---\n\xff\xfe caf\xe9\n")
    res = push("--folder", adapter, "--repo-id", REPO, "--dry-run", token=None)
    assert res.exit_code == 2
    assert err(res) == f"error: {adapter / 'README.md'} is not UTF-8 text (byte 21); save the model card as UTF-8"
    assert len(res.stderr.strip().splitlines()) == 1


def test_peft_template_card_is_replaced_not_published(adapter):
    (adapter / "README.md").write_text("---\nbase_model: /home/me/llama\nlibrary_name: peft\n---\n\n"
                                       "# Model Card for Model ID\n\n<!-- Provide a quick summary of what the model is/does. -->\n")
    res = push("--folder", adapter, "--repo-id", REPO, "--dry-run", token=None)
    assert res.exit_code == 0, res.output
    assert "Model Card for Model ID" not in res.stdout and "/home/me" not in res.stdout
    assert "base_model_relation: adapter" in res.stdout


def test_stage1_adapter_that_cannot_be_found_is_one_line(adapter):
    data = json.loads((adapter / "flare_config.json").read_text())
    data["meta"] = {"task_adapter": "/nowhere/qa-en"}
    (adapter / "flare_config.json").write_text(json.dumps(data))
    res = push("--folder", adapter, "--repo-id", REPO, "--dry-run", token=None)
    assert res.exit_code == 2
    assert err(res).startswith(f"error: {adapter} was trained on top of the task adapter /nowhere/qa-en, which is "
                               "not found from here (")
    assert err(res).endswith("pass --task-adapter DIR|USER/NAME (the repo must hold stage 1 to be the trained model)")
