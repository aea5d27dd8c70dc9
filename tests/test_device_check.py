"""benchmarks/device_check.py on CPU with its tiny preset: every section runs and reports."""

from __future__ import annotations

import json

from benchmark_scripts import load_benchmark


def test_device_check_tiny_preset_runs_every_section(tmp_path, capsys):
    module = load_benchmark("device_check")
    out = tmp_path / "report.json"
    report = module.main(["--preset", "tiny", "--batch", "1", "--prompt-len", "32", "--steps", "1",
                          "--e2e-steps", "2", "--json-out", str(out)])
    assert json.loads(out.read_text()) == report
    ratios = report["speed"]["ratios"]
    for key in ("flare/lora step", "flare/lora peak memory", "flare/lora step (checkpointing)",
                "flare/lora activation memory (checkpointing)"):
        assert 0.5 < ratios[key] < 3.0, (key, ratios)
    e2e = report["end_to_end"]
    assert e2e["lora"]["ok"] and e2e["flare"]["ok"] and e2e["lora"]["steps"] == e2e["flare"]["steps"] == 2
    assert e2e["4bit"].startswith("skipped") or e2e["4bit"] == "ran"
    fsdp = report["sharded"]["fsdp"]
    assert fsdp["ok"] and (fsdp["engine"], fsdp["processes"], fsdp["steps"]) == ("FSDP2", 2, 2), fsdp
    assert report["sharded"]["deepspeed"].startswith("refused: flare train does not run under DeepSpeed")
    assert "device check done" in capsys.readouterr().out
