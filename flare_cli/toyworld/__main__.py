"""`python -m flare_cli.toyworld --size full --seed 0 [--check]`: build the world, print timings."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flare_cli.errors import FlareError
from flare_cli.toyworld.build import SIZES, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flare_cli.toyworld", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="default: $FLARE_HOME/toyworld/<size>-seed<seed>")
    parser.add_argument("--check", action="store_true", help="also measure base English QA EM and MT quality")
    args = parser.parse_args(argv)

    last = {}

    def progress(description: str, done: int, total: int) -> None:
        if done == total or time.monotonic() - last.get(description, 0) > 5:
            last[description] = time.monotonic()
            print(f"  {description}: {done}/{total}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        world = build(args.root, seed=args.seed, size=args.size, progress=progress)
    except FlareError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    total = time.perf_counter() - start
    print(f"toy world {args.size} seed {args.seed} at {world.root} ({'reused' if world.reused else 'built'})")
    for stage, seconds in world.timings.items():
        print(f"  {stage:<10} {seconds:7.1f} s")
    print(f"  {'total':<10} {total:7.1f} s")
    if args.check:
        from flare_cli.toyworld.check import base_english_qa_em, mt_quality

        print(f"  base English QA exact match (200 validation prompts): {base_english_qa_em(world):.3f}")
        for name, value in mt_quality(world).items():
            print(f"  MT {name} (200 held-out): {value:.3f}" if "exact" in name else f"  MT {name}: {value:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
