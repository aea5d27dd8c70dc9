"""Build (or reuse) the toy world on disk: tokenizer, task data, base LM, MT model, world.json.

Each stage is built in a temporary folder next to its final place and moved there with os.replace,
with a `.stage.json` naming the hash of everything it was built from; a stage whose folder exists
with the right hash is kept, so an interrupted build resumes where it stopped. `world.json` is
written last (atomically): a world without it, or with another settings hash, is never taken as
complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from flare_cli import __version__
from flare_cli.config import flare_home
from flare_cli.errors import ConfigError, ModelError
from flare_cli.fsutil import atomic_write_json
from flare_cli.toyworld.corpus import Mix, parallel_pairs, pretraining_documents, tokenizer_training_text
from flare_cli.toyworld.language import Lexicon, Renderer
from flare_cli.toyworld.mt import MTSettings, train_mt
from flare_cli.toyworld.pretrain import BaseSettings, pretrain, restored_threads
from flare_cli.toyworld.taskdata import DRAW, TASKS, english_row, target_row
from flare_cli.toyworld.tokenizer import ENGLISH_FLORES, TARGET_FLORES, llama_tokenizer, nllb_tokenizer

# Bump when the generator's output changes for the same settings, so cached worlds are rebuilt.
GENERATOR_VERSION = 2
TARGET_LANG = "qtw"
WORLD_FILE = "world.json"
STAGE_FILE = ".stage.json"
STAGES = ("tokenizer", "data", "base", "mt")

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DataSizes:
    """Rows per task: English train/validation, target test, target (gold translate-train) train."""

    train: int
    validation: int
    test: int
    target_train: int


@dataclass(frozen=True)
class WorldSettings:
    vocab_size: int
    tokenizer_lines: int
    data: DataSizes
    base: BaseSettings
    mt: MTSettings
    mix: Mix = field(default_factory=Mix)


SIZES = {
    "full": WorldSettings(
        vocab_size=1200,
        tokenizer_lines=6000,
        data=DataSizes(train=2000, validation=500, test=1000, target_train=1000),
        base=BaseSettings(),
        mt=MTSettings(),
    ),
    # CI end-to-end runs: every file and folder of the full world, small and barely trained.
    "quick": WorldSettings(
        vocab_size=1200,
        tokenizer_lines=3000,
        data=DataSizes(train=200, validation=50, test=100, target_train=100),
        base=BaseSettings(steps=40, batch=8, seq_len=64, warmup=5),
        mt=MTSettings(steps=30, batch=8, warmup=5),
    ),
}


@dataclass(frozen=True)
class World:
    """Where a built world lives; the folders are ordinary Hugging Face / JSONL folders."""

    root: Path
    seed: int
    size: str
    base_dir: Path
    mt_dir: Path
    data_dir: Path
    target_lang: str = TARGET_LANG
    flores: str = TARGET_FLORES
    english_flores: str = ENGLISH_FLORES
    reused: bool = False  # True when nothing had to be built
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage built by this call

    def data_file(self, task: str, split: str, lang: str = "en") -> Path:
        return self.data_dir / task / f"{split}.{lang}.jsonl"


def default_root(size: str = "full", seed: int = 0) -> Path:
    return flare_home() / "toyworld" / f"{size}-seed{seed}"


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_hashes(settings: WorldSettings, seed: int) -> dict[str, str]:
    """Each stage's hash covers its own settings and every stage it is built from."""
    tokenizer = _hash(GENERATOR_VERSION, seed, settings.vocab_size, settings.tokenizer_lines)
    data = _hash(GENERATOR_VERSION, seed, asdict(settings.data))
    base = _hash(tokenizer, asdict(settings.base), asdict(settings.mix))
    mt = _hash(tokenizer, asdict(settings.mt))
    return {"tokenizer": tokenizer, "data": data, "base": base, "mt": mt}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("torch", "transformers", "sentencepiece")} | {"flare_cli": __version__}


def _stage_done(folder: Path, expected: str) -> bool:
    try:
        return json.loads((folder / STAGE_FILE).read_text())["hash"] == expected
    except (OSError, ValueError, KeyError):
        return False


def write_json_atomic(path: Path, payload: dict) -> None:
    atomic_write_json(path, payload, indent=2, ensure_ascii=False)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def task_rows(task: str, seed: int, sizes: DataSizes, renderer: Renderer) -> dict[str, list[dict]]:
    """The task's files, keyed by file name. Target train rows are the gold translations of the
    first English train rows (same ids), as `flare translate --direction train` would produce."""
    rng = random.Random(f"{task}-rows-{seed}")
    train = [DRAW[task](rng) for _ in range(sizes.train)]
    validation = [DRAW[task](rng) for _ in range(sizes.validation)]
    test = [DRAW[task](rng) for _ in range(sizes.test)]
    noise = random.Random(f"{task}-noise-{seed}")
    return {
        "train.en.jsonl": [english_row(ex, task, renderer, f"{task}-train-{i:05d}") for i, ex in enumerate(train)],
        "validation.en.jsonl": [
            english_row(ex, task, renderer, f"{task}-validation-{i:05d}") for i, ex in enumerate(validation)
        ],
        "test.qtw.jsonl": [
            target_row(ex, task, renderer, f"{task}-test-{i:05d}", noise) for i, ex in enumerate(test)
        ],
        "train.qtw.jsonl": [
            target_row(ex, task, renderer, f"{task}-train-{i:05d}", None)
            for i, ex in enumerate(train[: sizes.target_train])
        ],
    }


def build(root: Path | None = None, seed: int = 0, size: str = "full", progress: Progress | None = None) -> World:
    """Build the toy world at `root` (default: `default_root(size, seed)`), or reuse a complete one.

    `progress(description, completed, total)` is called as stages advance.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown toy world size {size!r}; choose one of: {', '.join(SIZES)}")
    settings = SIZES[size]
    root = Path(root) if root is not None else default_root(size, seed)
    hashes = stage_hashes(settings, seed)
    settings_hash = _hash(hashes)
    world = World(root=root, seed=seed, size=size, base_dir=root / "base", mt_dir=root / "mt", data_dir=root / "data")
    try:
        meta = json.loads((root / WORLD_FILE).read_text())
        if meta.get("settings_hash") == settings_hash and all(
            _stage_done(root / stage, hashes[stage]) for stage in STAGES
        ):
            return replace(world, reused=True)
    except (OSError, ValueError):
        pass  # absent or unreadable: (re)build what is missing

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the toy world folder {root}: {err.strerror}") from None
    renderer = Renderer(Lexicon.generate(seed))
    sp_model_file = root / "tokenizer" / "toy.model"
    timings: dict[str, float] = {}
    metrics: dict[str, float] = {}

    def make_tokenizer(tmp: Path) -> None:
        from flare_cli.toyworld.tokenizer import train_sentencepiece

        lines = tokenizer_training_text(seed, renderer, settings.tokenizer_lines)
        (tmp / "toy.model").write_bytes(train_sentencepiece(lines, settings.vocab_size))

    def make_data(tmp: Path) -> None:
        for i, task in enumerate(TASKS):
            for name, rows in task_rows(task, seed, settings.data, renderer).items():
                write_jsonl(tmp / task / name, rows)
            if progress:
                progress("write task data", i + 1, len(TASKS))

    def make_base(tmp: Path) -> None:
        tokenizer = llama_tokenizer(sp_model_file.read_bytes(), tmp)
        documents = pretraining_documents(seed, renderer, settings.mix)
        with restored_threads():
            metrics["base_final_loss"] = pretrain(tmp, tokenizer, documents, settings.base, seed, progress)

    def make_mt(tmp: Path) -> None:
        tokenizer = nllb_tokenizer(sp_model_file.read_bytes(), tmp)
        pairs = parallel_pairs(seed, renderer, "train")
        with restored_threads():
            metrics["mt_final_loss"] = train_mt(tmp, tokenizer, pairs, settings.mt, seed, progress)

    makers = {"tokenizer": make_tokenizer, "data": make_data, "base": make_base, "mt": make_mt}
    for stage in STAGES:
        final = root / stage
        if _stage_done(final, hashes[stage]):
            continue
        start = time.perf_counter()
        tmp = root / f".{stage}.{os.getpid()}.tmp"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            makers[stage](tmp)
            write_json_atomic(tmp / STAGE_FILE, {"hash": hashes[stage], "seed": seed, "size": size})
            shutil.rmtree(final, ignore_errors=True)  # a stale or half-moved stage
            os.replace(tmp, final)
        except OSError as err:  # disk full, permissions: finished stages stay, the next build resumes
            raise ModelError(f"building the toy world's {stage} stage in {root} failed: {err}") from None
        timings[stage] = round(time.perf_counter() - start, 2)

    old_metrics = {}
    try:
        old_metrics = json.loads((root / WORLD_FILE).read_text()).get("metrics", {})
    except (OSError, ValueError):
        pass
    write_json_atomic(
        root / WORLD_FILE,
        {
            "seed": seed,
            "size": size,
            "settings_hash": settings_hash,
            "stages": hashes,
            "generator_version": GENERATOR_VERSION,
            "versions": _versions(),
            "target_lang": TARGET_LANG,
            "flores": TARGET_FLORES,
            "english_flores": ENGLISH_FLORES,
            "tasks": list(TASKS),
            "settings": asdict(settings),
            "timings_s": timings,
            "metrics": old_metrics | metrics,
        },
    )
    return replace(world, timings=timings)
