"""`python -m flare_cli.toyworld --size full --seed 0 [--check]`: build the world, print timings.

`--rebuild` retrains every stage (ignoring the cache and the copies shipped in the package) and says
whether the shipped copies were built from the same settings; `--ship` then replaces them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flare_cli.errors import FlareError
from flare_cli.toyworld.build import SHIPPED_STAGES, SIZES, build, shipped_stage, ship, stage_hashes, world_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flare_cli.toyworld", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="default: $FLARE_HOME/toyworld/<size>-seed<seed>")
    parser.add_argument("--mt-confusion", type=float, default=None,
                        help="share of English words the MT learns wrong (its quality, 0-1); default: the size's")
    parser.add_argument("--check", action="store_true", help="also measure base English QA EM and MT quality")
    parser.add_argument("--rebuild", action="store_true",
                        help="retrain every stage (no cache, no shipped copies) and compare with the shipped hashes")
    parser.add_argument("--ship", action="store_true", help="copy the built tokenizer, base and MT into the package")
    args = parser.parse_args(argv)

    last = {}

    def progress(description: str, done: int, total: int) -> None:
        if done == total or time.monotonic() - last.get(description, 0) > 5:
            last[description] = time.monotonic()
            print(f"  {description}: {done}/{total}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        world = build(args.root, seed=args.seed, size=args.size, progress=progress, mt_confusion=args.mt_confusion,
                      rebuild=args.rebuild)
    except FlareError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    total = time.perf_counter() - start
    print(f"toy world {args.size} seed {args.seed} at {world.root} ({'reused' if world.reused else 'built'})")
    for stage, seconds in world.timings.items():
        print(f"  {stage:<10} {seconds:7.1f} s" + (" (shipped copy)" if stage in world.shipped else ""))
    print(f"  {'total':<10} {total:7.1f} s")
    if args.rebuild:
        hashes = stage_hashes(world_settings(args.size, args.mt_confusion), args.seed)
        for stage in SHIPPED_STAGES:
            match = shipped_stage(stage, hashes[stage])
            print(f"  shipped {stage}: " + (f"same settings hash ({match})" if match else "none with this settings hash"))
    if args.ship:
        print(f"  shipped into {ship(world)}")
    if args.check:
        from flare_cli.toyworld.check import base_english_qa_em, mt_quality

        print(f"  base English QA exact match (200 validation prompts): {base_english_qa_em(world):.3f}")
        for name, value in mt_quality(world).items():
            print(f"  MT {name} (200 held-out): {value:.3f}" if "exact" in name else f"  MT {name}: {value:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
