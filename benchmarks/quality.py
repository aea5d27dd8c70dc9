"""Quality benchmark on the toy world: FLARE against its baselines over several seeds.

    python benchmarks/quality.py --task qa --seeds 0 1 2 --pivots mt gold noisy    # the main QA table
    python benchmarks/quality.py --task qa --seeds 0 1 2 --mt-confusion 0.2        # another MT level
    python benchmarks/quality.py --task nli --seeds 0 1 2                          # nli, sentiment alike
    python benchmarks/quality.py --task qa --seeds 0 1 2 --variants flare-layers-half flare-layers-quarter
    python benchmarks/quality.py --task qa --seeds 0 1 2 --train-rows 2000 --records runs/probes   # a recipe probe
    python benchmarks/quality.py --report          # docs/results.md and its plots from docs/results/*.json
    python benchmarks/quality.py --quick --seeds 0 # smoke run of the script itself

Each run adds its records to docs/results/<task>-mt<confusion>.json (resumable: rerun to continue);
`--report` renders every table and plot of docs/results.md from those files.

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
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import MAIN_SCORE, method_table, write_report  # noqa: E402  (benchmarks/report.py)

# name -> (train method, stage-3 overrides); "lora"/"flare" come from the demo itself.
VARIANTS = {
    "input-fusion": ("input-fusion", {}),
    "flare-mt": ("flare-mt", {}),
    "flare-add": ("flare", {"fusion": "add"}),
    "flare-mul": ("flare", {"fusion": "mul"}),
    "flare-cross_attention": ("flare", {"fusion": "cross_attention"}),
    "flare-source_norm": ("flare", {"source_norm": True}),
    "flare-align_start": ("flare", {"align": "start"}),
    # The cost knob: fuse in the first half / quarter of the 4 layers; the pivot pass stops there.
    "flare-layers-half": ("flare", {"fused_layers": "0,1"}),
    "flare-layers-quarter": ("flare", {"fused_layers": "0"}),
    # Fusion in every module that reads the hidden state (all but down_proj), not only q_proj and v_proj.
    "flare-fuse-all": ("flare", {"fused_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj"}),
    # Capacity: rank 16 for both stage-3 methods (the recipe's is 8).
    "lora-r16": ("lora", {"r": 16, "lora_alpha": 32}),
    "flare-r16": ("flare", {"r": 16, "lora_alpha": 32}),
}
DEFAULT_VARIANTS = ["input-fusion"]
PIVOT_KINDS = ("mt", "gold", "noisy")

# Methods scored with every pivot kind asked for; the rest (ablations) on MT pivots only, to save time.
ALL_PIVOTS = ("translate-test", "input-fusion", "flare")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["qa", "nli", "sentiment"], default="qa")
    parser.add_argument("--mt-confusion", type=float, default=None,
                        help="the world's MT level (share of words its MT learns wrong; default: the demo world's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="runs/quality")
    parser.add_argument("--quick", action="store_true", help="the quick world and recipe (checks the script only)")
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                        help="variants to train beside the demo's (zero-shot, translate-test, lora, flare)")
    parser.add_argument("--pivots", nargs="+", default=["mt"], choices=PIVOT_KINDS,
                        help="English pivots to score with: the pipeline's MT, the world's gold, noisy gold")
    parser.add_argument("--records", default=str(ROOT / "docs" / "results"), help="'' to keep no records")
    parser.add_argument("--report", action="store_true", help="train nothing: render docs/results.md from the records")
    parser.add_argument("--train-rows", type=int, default=None,
                        help="translate-train rows (the demo recipe's: all 8000 of the world's); "
                             "another value keeps its records apart (<task>-mt<level>-rows<N>.json)")
    args = parser.parse_args(argv)

    from flare_cli import demo
    from flare_cli.toyworld.build import SIZES

    if args.report:
        write_report(Path(args.records), ROOT / "docs" / "results.md")
        return 0
    size = "quick" if args.quick else "full"
    level = SIZES[size].mt.confusion if args.mt_confusion is None else args.mt_confusion
    name = f"{args.task}-mt{level:g}" + ("-quick" if args.quick else "")
    recipe = demo.RECIPES[size]
    if args.train_rows is not None and args.train_rows != recipe.train_rows:
        # A probe of the recipe: demo.run and run_seed read RECIPES, so the override goes there.
        demo.RECIPES[size] = replace(recipe, train_rows=args.train_rows)
        name += f"-rows{args.train_rows}"
    work = Path(args.workdir) / name
    records_file = Path(args.records) / f"{name}.json" if args.records else None
    records = _load(records_file).get("records", []) if records_file else []
    started = time.perf_counter()
    for seed in args.seeds:
        seed_dir = work / f"seed{seed}"
        first = work / f"seed{args.seeds[0]}" / "data"
        if seed != args.seeds[0] and first.is_dir() and not (seed_dir / "data").exists():
            shutil.copytree(first, seed_dir / "data")  # the same translations for every seed
        print(f"== {name} seed {seed}: demo pipeline", file=sys.stderr, flush=True)
        result = demo.run(demo.DemoConfig(workdir=str(seed_dir), quick=args.quick, seed=seed, task=args.task,
                                          mt_confusion=args.mt_confusion), _Printer())
        fresh = run_seed(result, seed, args.quick, args.variants, args.pivots)
        keys = {(r["method"], r["seed"], r["pivots"]) for r in fresh}
        records = [r for r in records if (r["method"], r["seed"], r["pivots"]) not in keys] + fresh
        if records_file:
            _save(records_file, {"task": args.task, "mt_confusion": level, "mt_quality": result.mt_quality,
                                 "command": "python benchmarks/quality.py " + " ".join(argv or sys.argv[1:]),
                                 "records": records})
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    print(method_table(records))
    return 0


def _load(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}


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


def run_seed(result, seed: int, quick: bool, variants: list[str], pivots_asked: list[str]) -> list[dict]:
    from flare_cli import evaluate, train
    from flare_cli.demo import RECIPES

    recipe = RECIPES["quick" if quick else "full"]
    work = Path(result.workdir)
    base = str(Path(result.world_root) / "base")
    stage1 = str(work / "stage1-en")
    data = work / "data"
    files = test_files(result, work / "data")
    key = MAIN_SCORE[result.task]
    records = [dict(row, seed=seed, pivots="mt", score=row[key]) for row in result.rows]

    adapters = {"lora": work / f"lora-{result.lang}", "flare": work / f"flare-{result.lang}"}
    for name in variants:
        method, overrides = VARIANTS[name]
        out = work / f"{name}-{result.lang}"
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
        print(f"  {label} ({pivots} pivots): {key} {metrics[key]:.1f}", file=sys.stderr, flush=True)

    for pivots in [p for p in pivots_asked if p != "mt"]:
        score("translate-test", "translate-test", None, pivots)
        score("flare", "flare", adapters["flare"], pivots)
    for name in [v for v in variants if v in adapters]:
        method = VARIANTS[name][0]
        for pivots in (pivots_asked if name in ALL_PIVOTS else ("mt",)):
            if method == "flare-mt" and pivots != "mt":
                continue  # FLARE-MT reads no pivot column
            score(name, method, adapters[name], pivots)
    return records


def _save(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
