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
    assert card == (adapter / "README.md").read_text() and out["card_written"] is True
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
    assert hub.commits(REPO)[-1] == {**hub.commits(REPO)[-1], "summary": "new metrics", "files": ["metrics.json"]}


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
