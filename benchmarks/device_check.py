"""One script for a machine with an accelerator: what `flare train` costs and which paths run.

    python benchmarks/device_check.py                    # CUDA: Llama-3.1-8B shape, bf16 (< 8 min on one H100/H200)
    python benchmarks/device_check.py --preset tiny      # CPU: the same sections on a tiny shape (the tests run this)

Sections, each printed as it finishes and gathered in --json-out:
  1. speed: benchmarks/speed.py on a random-weight Llama of the preset's shape: FLARE/LoRA step time
     and peak memory ratios, tokens/s and (CUDA) MFU, with and without gradient checkpointing;
  2. end to end: the real `flare train` CLI (subprocess) for LoRA and FLARE on a small saved base,
     with --load-in-4bit (NF4, bf16 compute) where CUDA and bitsandbytes exist, else said and skipped;
  3. FSDP2: `flare train` under accelerate launch with examples/accelerate/fsdp.yaml, 2 processes (2 GPUs
     where there are, else CPU/gloo); DeepSpeed: its one-line refusal.
Nothing is downloaded: models are random, the tokenizer is tests/tiny_models.py's toy BPE.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section_speed(args, cuda: bool) -> dict:
    speed = load_speed()
    argv = ["--preset", args.preset, "--device", "cuda" if cuda else "cpu", "--dtype", "bf16" if cuda else "fp32",
            "--batch", str(args.batch), "--prompt-len", str(args.prompt_len), "--steps", str(args.steps),
            "--warmup", "1", "--checkpointing", "both", "--no-input-fusion", "--no-eval"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        speed.main(argv)
    text = buffer.getvalue()
    print(text)
    ratios = {}
    for line in text.split("== ratios", 1)[1].splitlines()[1:]:
        found = re.match(r"\s*(.+?)\s+(\d+\.\d+)", line)
        if found:
            ratios[found.group(1)] = float(found.group(2))
    return {"argv": argv, "ratios": ratios}


def section_end_to_end(args, cuda: bool, folder: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from tiny_models import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder / "base")
    tok.save_pretrained(folder / "base")
    with (folder / "train.jsonl").open("w") as handle:
        for i in range(32):
            handle.write(json.dumps({"id": f"r{i}", "context": f"Amina anaishi Dodoma {i}.",
                                     "question": "Amina anaishi wapi?", "answer": "Dodoma",
                                     "pivot_context": f"Amina lives in Dodoma {i}.",
                                     "pivot_question": "Where does Amina live?"}) + "\n")
    four_bit = cuda and importlib.util.find_spec("bitsandbytes") is not None
    results = {"4bit": "ran" if four_bit else "skipped: needs CUDA and bitsandbytes"}
    for method in ("lora", "flare"):
        out = folder / f"out-{method}"
        cmd = [sys.executable, "-m", "flare_cli", "train", "--base", str(folder / "base"), "-o", str(out),
               "--task", "qa", "--lang", "sw", "--method", method, "--data", str(folder / "train.jsonl"),
               "--batch-size", "8", "--micro-batch-size", "4", "--max-steps", str(args.e2e_steps),
               "--logging-steps", "1", "--lr", "1e-3", "--json", *(["--load-in-4bit", "--bf16"] if four_bit else [])]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
        seconds = time.perf_counter() - start
        if proc.returncode:
            results[method] = {"ok": False, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            results[method] = {"ok": True, "steps": summary["steps"], "train_loss": summary["train_loss"],
                               "seconds": round(seconds, 1), "load_in_4bit": four_bit}
        print(f"end to end {method}{' 4-bit' if four_bit else ''}: {results[method]}")
    print(f"4-bit path: {results['4bit']}")
    return results


def section_sharded(args, folder: Path) -> dict:
    """FSDP2: the real CLI under `accelerate launch --config_file examples/accelerate/fsdp.yaml` with
    2 processes on the small base of section 2: on 2 GPUs where there are, else on CPU (gloo; one
    GPU cannot hold 2 NCCL ranks). DeepSpeed: the one-line refusal."""
    import torch

    from flare_cli.distributed import check_engine_settings
    from flare_cli.errors import ConfigError

    gpus = torch.cuda.device_count()
    device = "cuda" if gpus >= 2 else "cpu"
    out = folder / "out-fsdp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "examples" / "accelerate" / "fsdp.yaml"), "--num_processes", "2", "--main_process_port", "0",
           "-m", "flare_cli", "train", "--base", str(folder / "base"), "-o", str(out), "--task", "qa", "--lang", "sw",
           "--method", "flare", "--data", str(folder / "train.jsonl"), "--batch-size", "8", "--micro-batch-size", "4",
           "--max-steps", str(args.e2e_steps), "--logging-steps", "1", "--lr", "1e-3", "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")] or proc.stderr.splitlines()
        fsdp = {"ok": False, "device": device, "error": (errors or ["?"])[-1]}
    else:
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        fsdp = {"ok": True, "device": device, "engine": summary["engine"], "processes": summary["processes"],
                "steps": summary["steps"], "train_loss": summary["train_loss"],
                "seconds": round(time.perf_counter() - start, 1)}
    print(f"fsdp: {fsdp}")
    old = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        check_engine_settings()
        deepspeed = "accepted"
    except ConfigError as err:
        deepspeed = f"refused: {err}"
    finally:
        os.environ.pop("ACCELERATE_USE_DEEPSPEED") if old is None else os.environ.__setitem__("ACCELERATE_USE_DEEPSPEED", old)
    print(f"deepspeed: {deepspeed}")
    return {"fsdp": fsdp, "deepspeed": deepspeed}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-3.1-8b", help="benchmarks/speed.py preset (tiny on CPU)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method and setting")
    parser.add_argument("--e2e-steps", type=int, default=4)
    parser.add_argument("--json-out", help="write every figure here")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and args.preset not in ("tiny", "small"):
        sys.exit(f"no CUDA device: preset {args.preset} would take hours on CPU; use --preset tiny")
    start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "preset": args.preset}
    report["speed"] = section_speed(args, cuda)
    with tempfile.TemporaryDirectory(prefix="flare-device-check-") as tmp:
        report["end_to_end"] = section_end_to_end(args, cuda, Path(tmp))
        report["sharded"] = section_sharded(args, Path(tmp))
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(f"device check done in {report['seconds']}s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
