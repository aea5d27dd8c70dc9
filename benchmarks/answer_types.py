"""Where the QA points are: exact match per kind of answer, from the predictions of quality runs.

    python benchmarks/answer_types.py runs/quality/qa-mt0.6        # every seed*/eval/*/predictions.jsonl

In the toy world an answer is a city, an age, or a job / pet / car colour. Cities and ages are copied
unchanged between English and qtw (a capitalised word, a number); jobs, pets and colours are
translated words, so reading them from a qtw context needs the target language (docs/toyworld.md).
Prints a markdown table: one row per evaluation folder, exact match per kind, mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

KINDS = ("age", "city", "job/pet/colour")


def answer_kind(gold: str) -> str:
    if gold.isdigit():
        return "age"
    return "city" if gold[:1].isupper() else "job/pet/colour"


def scores_by_kind(predictions: Path) -> tuple[dict[str, float], dict[str, int]]:
    right, total = defaultdict(int), defaultdict(int)
    for line in predictions.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        kind = answer_kind(row["gold"])
        total[kind] += 1
        right[kind] += bool(row["correct"])
    return {k: 100 * right[k] / total[k] for k in total}, dict(total)


def table(workdir: Path) -> str:
    per_method: dict[str, list[dict[str, float]]] = defaultdict(list)
    counts: dict[str, int] = {}
    for predictions in sorted(workdir.glob("seed*/eval/*/predictions.jsonl")):
        scores, counts = scores_by_kind(predictions)
        per_method[predictions.parent.name].append(scores)
    if not per_method:
        raise SystemExit(f"no seed*/eval/*/predictions.jsonl under {workdir}")
    head = " | ".join(f"{k} (n={counts.get(k, 0)})" for k in KINDS)
    lines = [f"| evaluation | seeds | {head} |", "|---|---:|" + "---:|" * len(KINDS)]
    for method, runs in per_method.items():
        cells = [f"{statistics.mean(r.get(k, 0.0) for r in runs):.1f}" for k in KINDS]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="a quality.py run folder (holding seed0/, seed1/, ...)")
    print(table(parser.parse_args(argv).workdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
