"""Toy world build time per stage against its budget (full <= 300 s, quick <= 60 s), from scratch
in a temporary folder, with the load average beside it (the cores may be shared).

    python benchmarks/toyworld_build.py [--sizes quick full] [--seed 0] [--check]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

BUDGET_S = {"quick": 60.0, "full": 300.0}


def main() -> None:
    from flare_cli.toyworld import build

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["quick", "full"], choices=sorted(BUDGET_S))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="also measure base English QA EM and MT quality")
    args = parser.parse_args()

    print(f"{'size':<6} {'stage':<10} {'seconds':>8}  (cpu count {os.cpu_count()})")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            world = build(Path(tmp) / size, seed=args.seed, size=size)
            total = time.perf_counter() - start
            for stage, seconds in world.timings.items():
                print(f"{size:<6} {stage:<10} {seconds:8.1f}")
            print(
                f"{size:<6} {'total':<10} {total:8.1f}  budget {BUDGET_S[size]:.0f} s, ratio {total / BUDGET_S[size]:.2f}"
                f"  (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})"
            )
            if args.check:
                from flare_cli.toyworld.check import base_english_qa_em, mt_quality

                print(f"{size:<6} base English QA EM {base_english_qa_em(world):.3f}")
                print(f"{size:<6} MT " + ", ".join(f"{k} {v:.3f}" for k, v in mt_quality(world).items()))


if __name__ == "__main__":
    main()
