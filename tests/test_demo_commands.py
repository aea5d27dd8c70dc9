"""Every shell command `flare demo` prints is the step it runs: parsed by the real CLI, each one
resolves to the stage config the demo runs (nothing is executed; the toy world is not built)."""

from __future__ import annotations

import json
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flare_cli import demo
from flare_cli.cli import app
from flare_cli.config import public_dict


@pytest.fixture(params=[True, False], ids=["quick", "full"])
def steps(request, tmp_path):
    cfg = demo.DemoConfig(workdir=str(tmp_path / "work"), world_root=str(tmp_path / "world"), quick=request.param,
                          mt_engine="transformers")
    pipe, _ = demo.plan(cfg)
    return pipe.steps


def flare_args(step) -> list[str]:
    """The arguments after `flare <name>` in the step's printed command (after a `head ... &&`)."""
    words = shlex.split(step.command)
    start = next(i for i, w in enumerate(words) if w == "flare" and (i == 0 or words[i - 1] == "&&"))
    assert words[start + 1] == step.cli_name
    return words[start + 2 :]


def normal(value):
    if isinstance(value, (list, tuple)):
        return [normal(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def test_every_stage_step_prints_a_command_the_cli_parses_into_its_config(steps):
    group = typer.main.get_command(app)
    stage_steps = [s for s in steps if s.config is not None]
    assert [s.cli_name for s in stage_steps] == ["translate"] * 3 + ["train"] * 3 + ["eval"] * 5 + ["merge", "push"]
    for step in stage_steps:
        command = group.commands[step.cli_name]
        ctx = command.make_context(step.cli_name, flare_args(step))  # unknown flags or bad values raise here
        checked = 0
        for f in fields(step.config):
            if f.name not in ctx.params or not f.repr:
                continue
            parsed, expected = normal(ctx.params[f.name]), normal(getattr(step.config, f.name))
            if step.cli_name == "eval" and f.name in ("method", "adapter"):
                parsed = parsed[0] if parsed else None  # repeatable options
            if parsed is None and step.cli_name == "train":
                continue  # train options default to None: the config's default applies
            assert parsed == expected, (step.key, f.name, parsed, expected)
            checked += 1
        assert checked >= 4, step.key


def test_train_commands_resolve_to_the_same_config_through_dry_run(steps):
    runner = CliRunner()
    for step in steps:
        if step.cli_name != "train":
            continue
        res = runner.invoke(app, ["train", *flare_args(step), "--dry-run", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout) == json.loads(json.dumps(public_dict(step.config)))


def test_world_command_runs_the_toyworld_entry_point_with_the_demos_world(steps, monkeypatch):
    from types import SimpleNamespace

    from flare_cli.toyworld import __main__ as toyworld_main

    world = steps[0]
    words = shlex.split(world.command)
    assert words[:3] == ["python", "-m", "flare_cli.toyworld"]
    called = {}

    def fake_build(root, *, seed, size, progress, mt_confusion, rebuild):
        called.update(root=str(root), seed=seed, size=size, mt_confusion=mt_confusion)
        return SimpleNamespace(root=root, reused=True, timings={}, shipped=())

    monkeypatch.setattr(toyworld_main, "build", fake_build)
    assert toyworld_main.main(words[3:]) == 0
    expected_size = "quick" if "quick" in world.title else "full"
    assert called == {"root": str(Path(words[words.index("--root") + 1])), "seed": 0, "size": expected_size,
                      "mt_confusion": None}
    assert called["root"] == str(Path(steps[1].config.mt_model).parent)  # the world the later steps read


def test_a_push_token_never_reaches_a_printed_command():
    from flare_cli import hub

    cfg = hub.PushConfig(folder=Path("x"), repo_id="me/x", token="hf_secret", dry_run=True)
    assert "hf_secret" not in demo.cli_command("push", cfg)


def test_click_refuses_a_mistyped_flag():
    """The check above can fail: a flag the CLI does not know is an error, not ignored."""
    command = typer.main.get_command(app).commands["merge"]
    with pytest.raises(Exception, match="No such option: --overwrit"):
        command.make_context("merge", ["--adapter", "a", "-o", "b", "--overwrit"])
