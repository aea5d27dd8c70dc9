"""`flare train`'s loop against an earlier revision of it: wall and CPU time per optimizer step, side by side.

One run builds a Llama-shaped base with random weights and a toy QA file (nothing downloaded),
extracts the baseline revision with `git archive`, and runs `flare_cli.train.run` from each tree
in its own process, alternating (base, new, new, base, ...) so load from other processes hits both
alike. Per run it takes the step marks of trainer_log records (--logging-steps 1) and reports the
median over runs of (time between the first timed step and the last) / steps, for wall clock
(perf_counter) and process CPU time (process_time); checkpoints are written only at the end.

    python benchmarks/train_loop_speed.py --baseline de31591 --preset tiny --method flare

The toy tokenizer comes from tests/tiny_models.py (a byte-level BPE built in a second).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = {"tiny": (256, 688, 4), "small": (512, 1376, 8)}  # hidden, intermediate, layers (speed.py's shapes)

CHILD = r"""
import json, sys, time
from flare_cli import train
cfg = train.TrainConfig(**json.loads(sys.argv[1]))
marks = []
def on_log(record):
    if "loss" in record:
        marks.append((record["step"], time.perf_counter(), time.process_time()))
train.run(cfg, on_log=on_log)
print("MARKS", json.dumps(marks))
"""


def build_world(folder: Path, preset: str, rows: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from tiny_models import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers = PRESETS[preset]
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder / "base")
    tok.save_pretrained(folder / "base")
    names, cities = ["Amina", "Baraka", "Chidi", "Dalia"], ["Dodoma", "Arusha", "Tanga", "Moshi"]
    with (folder / "train.jsonl").open("w") as handle:
        for i in range(rows):
            name, city = names[i % 4], cities[(i // 4) % 4]
            story = " ".join(f"{name} anaishi {city} na anapenda kusoma vitabu." for _ in range(6))
            handle.write(json.dumps({"id": f"r{i}", "context": story, "question": f"{name} anaishi wapi?",
                                     "answer": city, "pivot_context": story.replace("anaishi", "lives in"),
                                     "pivot_question": f"Where does {name} live?"}) + "\n")


def run_once(tree: Path, cfg: dict, warmup: int) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], env=env, capture_output=True, text=True,
                          cwd=tree)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    marks = json.loads(proc.stdout.split("MARKS", 1)[1])
    (s0, w0, c0), (s1, w1, c1) = marks[warmup - 1], marks[-1]
    return (w1 - w0) / (s1 - s0), (c1 - c0) / (s1 - s0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision of the loop to compare against")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--method", choices=["lora", "flare"], default="flare")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the timing")
    parser.add_argument("--runs", type=int, default=3, help="runs per tree (alternating)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=2)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="flare-loop-speed-") as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
        build_world(tmp, args.preset, rows=args.micro_batch * args.accum * 8)
        times = {"baseline": [], "current": []}
        for run in range(args.runs):
            pair = (("baseline", baseline), ("current", ROOT))
            for name, tree in pair if run % 2 == 0 else pair[::-1]:  # neither tree always runs first
                cfg = {"base": str(tmp / "base"), "output_dir": str(tmp / f"out-{name}-{run}"), "task": "qa",
                       "lang": "sw", "method": args.method, "data": str(tmp / "train.jsonl"), "learning_rate": 1e-4,
                       "micro_batch_size": args.micro_batch, "batch_size": args.micro_batch * args.accum,
                       "max_steps": args.steps, "logging_steps": 1, "save_steps": args.steps, "r": 8}
                times[name].append(run_once(tree, cfg, args.warmup))
        print(f"flare train loop, preset {args.preset}, method {args.method}, micro-batch {args.micro_batch} x "
              f"accumulation {args.accum}, {args.steps - args.warmup} timed steps, median of {args.runs} runs")
        print(f"{'':24}{'baseline ' + args.baseline:>22}{'current':>12}{'ratio':>8}")
        for i, label in enumerate(("wall ms / step", "CPU ms / step")):
            base = statistics.median(t[i] for t in times["baseline"]) * 1000
            new = statistics.median(t[i] for t in times["current"]) * 1000
            print(f"{label:24}{base:>22.1f}{new:>12.1f}{new / base:>8.3f}")


if __name__ == "__main__":
    main()
