"""Quality benchmark on the toy world: FLARE against its baselines over several seeds.

    python benchmarks/quality.py --seeds 0 1 2            # full world; writes docs/results.md + PNG
    python benchmarks/quality.py --quick --seeds 0         # smoke run of the script itself

Per seed, `flare demo` (same recipe) gives the translations, stage 1, translate-train LoRA and FLARE
(add_relu) with their evaluations; this script then trains the other variants with the same
recipe (input-level fusion, each fusion function, source_norm, align=start, FLARE-MT) and evaluates
every method on the same test rows with three kinds of English pivot: MT (the pipeline's own
translate-test output), gold (the world's reference English) and noisy (gold with ~15% of words
corrupted). Everything is resumable: rerun the command to continue.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (train method, stage-3 overrides); "lora"/"flare" come from the demo itself.
VARIANTS = {
    "input-fusion": ("input-fusion", {}),
    "flare-mt": ("flare-mt", {}),
    "flare-add": ("flare", {"fusion": "add"}),
    "flare-mul": ("flare", {"fusion": "mul"}),
    "flare-cross_attention": ("flare", {"fusion": "cross_attention"}),
    "flare-source_norm": ("flare", {"source_norm": True}),
    "flare-align_start": ("flare", {"align": "start"}),
}
PIVOT_KINDS = ("mt", "gold", "noisy")
# Methods scored with every pivot kind; the rest (ablations) on MT pivots only, to save time.
ALL_PIVOTS = ("translate-test", "input-fusion", "flare")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="runs/quality")
    parser.add_argument("--quick", action="store_true", help="the quick world and recipe (checks the script only)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="extra variants to train")
    parser.add_argument("--results", default=str(ROOT / "docs" / "results.md"), help="'' to skip writing")
    parser.add_argument("--report-only", action="store_true",
                        help="train and evaluate nothing: tabulate what the workdir already holds")
    args = parser.parse_args(argv)

    from flare_cli import demo

    work = Path(args.workdir)
    records: list[dict] = []
    started = time.perf_counter()
    for seed in args.seeds:
        seed_dir = work / f"seed{seed}"
        first = work / f"seed{args.seeds[0]}" / "data"
        if seed != args.seeds[0] and first.is_dir() and not (seed_dir / "data").exists():
            shutil.copytree(first, seed_dir / "data")  # the same translations for every seed
        if args.report_only:
            summary = seed_dir / "summary.json"
            if not summary.is_file():
                print(f"== seed {seed}: no finished demo run in {seed_dir}; skipped", file=sys.stderr)
                continue
            result = demo.DemoResult(**json.loads(summary.read_text(encoding="utf-8")))
        else:
            print(f"== seed {seed}: demo pipeline", file=sys.stderr, flush=True)
            result = demo.run(demo.DemoConfig(workdir=str(seed_dir), quick=args.quick, seed=seed), _Printer())
        records += run_seed(result, seed, args.quick, args.variants, report_only=args.report_only)
        _save(work / "records.json", records)
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    table = summarize(records)
    print(render_markdown(table, args))
    if args.results:
        write_results(Path(args.results), table, records, args)
    return 0


class _Printer:
    def step(self, index, total, title, command):
        print(f"  [{index}/{total}] {title}", file=sys.stderr, flush=True)

    def progress(self, completed, total, note=""):
        pass

    def finished(self, seconds, note=""):
        print(f"      {note} ({seconds:.0f}s)", file=sys.stderr, flush=True)


def test_files(result, work: Path) -> dict[str, Path]:
    """The same test rows with MT, gold and noisy English pivots."""
    mt_file = Path(result.workdir) / "data" / f"test.{result.lang}.jsonl"
    n = sum(1 for _ in mt_file.open(encoding="utf-8"))
    world_test = Path(result.world_root) / "data" / result.task / f"test.{result.lang}.jsonl"
    rows = [json.loads(line) for line in world_test.read_text(encoding="utf-8").splitlines()[:n]]
    files = {"mt": mt_file}
    for kind in ("gold", "noisy"):
        path = work / f"test.{kind}.jsonl"
        if not path.exists():
            out = []
            for row in rows:
                row = dict(row)
                if kind == "noisy":
                    for key in [k for k in row if k.startswith("pivot_noisy_")]:
                        row["pivot_" + key[len("pivot_noisy_"):]] = row[key]
                out.append(row)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
        files[kind] = path
    return files


def run_seed(result, seed: int, quick: bool, variants: list[str], report_only: bool = False) -> list[dict]:
    from flare_cli import evaluate, train
    from flare_cli.demo import RECIPES

    recipe = RECIPES["quick" if quick else "full"]
    work = Path(result.workdir)
    base = str(Path(result.world_root) / "base")
    stage1 = str(work / "stage1-en")
    data = work / "data"
    files = test_files(result, work / "data")
    key = "exact_match" if result.task == "qa" else "accuracy"
    records = [dict(row, seed=seed, pivots="mt", score=row[key]) for row in result.rows]

    adapters = {"lora": work / f"lora-{result.lang}", "flare": work / f"flare-{result.lang}"}
    for name in variants:
        method, overrides = VARIANTS[name]
        out = work / f"{name}-{result.lang}"
        if report_only and not (out / train.RESULT_NAME).is_file():
            continue
        options = dict(recipe.stage3, seed=seed, **overrides)
        if method in ("lora", "input-fusion"):
            options.pop("fused_modules", None)
        if method == "flare-mt":
            options["mt_model"] = str(Path(result.world_root) / "mt")
        t0 = time.perf_counter()
        train.run(train.TrainConfig(
            base=base, output_dir=str(out), task=result.task, lang=result.lang, method=method,
            data=str(data / f"train.{result.lang}.jsonl"), validation_data=str(data / f"validation.{result.lang}.jsonl"),
            task_adapter=stage1, **options))
        print(f"  trained {name} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
        adapters[name] = out

    def score(label: str, method: str, adapter, pivots: str) -> None:
        out = work / "eval" / f"{label}-{pivots}"
        if (out / "metrics.json").is_file():
            metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        elif report_only:
            return
        else:
            cfg = evaluate.EvalConfig(
                adapter=str(adapter) if adapter else None, method=method, data=str(files[pivots]),
                output_dir=str(out), batch_size=recipe.eval_batch_size,
                mt_model=str(Path(result.world_root) / "mt"),  # back-translates translate-test answers
                **({} if adapter else {"base": base, "task_adapter": stage1, "task": result.task, "lang": result.lang}),
            )
            metrics = evaluate.run(cfg).metrics
        records.append({"method": label, "seed": seed, "pivots": pivots, "n": metrics["n"], "score": metrics[key],
                        **{k: metrics[k] for k in ("exact_match", "f1", "accuracy", "macro_f1") if k in metrics}})

    for pivots in ("gold", "noisy"):
        score("translate-test", "translate-test", None, pivots)
        score("flare", "flare", adapters["flare"], pivots)
    for name in [v for v in variants if v in adapters]:
        method = VARIANTS[name][0]
        for pivots in (PIVOT_KINDS if name in ALL_PIVOTS else ("mt",)):
            if method == "flare-mt" and pivots != "mt":
                continue  # FLARE-MT reads no pivot column
            score(name, method, adapters[name], pivots)
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Mean and spread (population std, min, max) per method and pivot kind."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        groups.setdefault((r["method"], r["pivots"]), []).append(r["score"])
    order = ["zero-shot", "translate-test", "lora", "input-fusion", "flare", *VARIANTS]
    rows = []
    for (method, pivots), values in groups.items():
        rows.append({"method": method, "pivots": pivots, "mean": statistics.fmean(values),
                     "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                     "min": min(values), "max": max(values), "seeds": len(values), "values": values})
    rows.sort(key=lambda r: (order.index(r["method"]) if r["method"] in order else 99, PIVOT_KINDS.index(r["pivots"])))
    return rows


def render_markdown(table: list[dict], args) -> str:
    lines = ["| method | pivots | mean | std | min | max | per seed |", "|---|---|---:|---:|---:|---:|---|"]
    for r in table:
        pivots = r["pivots"] if r["method"] not in ("zero-shot", "lora", "flare-mt") else "-"
        lines.append(f"| {r['method']} | {pivots} | {r['mean']:.1f} | {r['std']:.1f} | {r['min']:.1f} | "
                     f"{r['max']:.1f} | {', '.join(f'{v:.1f}' for v in r['values'])} |")
    return "\n".join(lines)


def plot(table: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the table and JSON are written anyway; the plot is the only optional part
        print(f"note: {path.name} not drawn: matplotlib is missing (pip install -e '.[bench]')", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in table))
    colours = {"mt": "#1f77b4", "gold": "#2ca02c", "noisy": "#ff7f0e"}
    width = 0.27
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for i, method in enumerate(methods):
        rows = [r for r in table if r["method"] == method]
        for j, r in enumerate(rows):
            x = i + (j - (len(rows) - 1) / 2) * width
            ax.bar(x, r["mean"], width * 0.95, yerr=r["std"], capsize=3, color=colours[r["pivots"]])
            ax.scatter([x] * len(r["values"]), r["values"], color="black", s=6, zorder=3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, [f"{k} pivots" for k in colours], loc="upper left", fontsize=8)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_ylabel("exact match (toy QA, qtw test)")
    ax.set_title("FLARE vs baselines on the toy world (bars: mean over seeds, whiskers: std, dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_results(path: Path, table: list[dict], records: list[dict], args) -> None:
    png = path.with_suffix(".png")
    plot(table, png)
    seeds = " ".join(map(str, args.seeds))
    text = RESULTS_TEMPLATE.format(
        command=f"python benchmarks/quality.py --seeds {seeds}" + (" --quick" if args.quick else ""),
        table=render_markdown(table, args), png=png.name, analysis_mark=ANALYSIS_MARK,
    )
    if path.is_file() and ANALYSIS_MARK in path.read_text(encoding="utf-8"):  # keep the hand-written analysis
        text += path.read_text(encoding="utf-8").split(ANALYSIS_MARK, 1)[1]
    path.write_text(text, encoding="utf-8")
    _save(path.with_suffix(".json"), {"summary": table, "records": records})


def _save(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


RESULTS_TEMPLATE = """# Results: FLARE on the toy world

Measured with `{command}` (the full toy world, seed 0; the seeds are training seeds of stage 1
and stage 3). Exact match (%) on the same target-language (qtw) QA test rows for every method.
Pivots: `mt` = the pipeline's own translate-test output from the world's MT model, `gold` = the
world's reference English, `noisy` = gold with ~15% of the words replaced, dropped or doubled.
`zero-shot`, `lora` and `flare-mt` read no pivot.

{table}

![FLARE vs baselines]({png})

""" + "{analysis_mark}"
ANALYSIS_MARK = "<!-- analysis: kept when the table is regenerated -->"


if __name__ == "__main__":
    sys.exit(main())
