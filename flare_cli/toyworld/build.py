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
from flare_cli.toyworld.corpus import (
    Mix,
    confusion_map,
    instruction_examples,
    parallel_pairs,
    pretraining_documents,
    tokenizer_training_text,
)
from flare_cli.toyworld.language import Lexicon, Renderer
from flare_cli.toyworld.mt import MTSettings, train_mt
from flare_cli.toyworld.pretrain import BaseSettings, pretrain, restored_threads
from flare_cli.toyworld.taskdata import DRAW, TASKS, english_row, target_row
from flare_cli.toyworld.tokenizer import ENGLISH_FLORES, TARGET_FLORES, llama_tokenizer, nllb_tokenizer

# Bump when the generator's output changes for the same settings, so cached worlds are rebuilt.
GENERATOR_VERSION = 3
# Bump when only the task files change, or only the MT's parallel text (that stage's hash alone).
DATA_VERSION = 2
MT_VERSION = 2
TARGET_LANG = "qtw"
WORLD_FILE = "world.json"
STAGE_FILE = ".stage.json"
STAGES = ("tokenizer", "data", "base", "mt")
# The demo world's trained stages ship inside the package (about 3 MB; they play the Llama and NLLB a
# user downloads), stamped with their stage hash: a build whose hash matches copies them instead of
# training for minutes. `python -m flare_cli.toyworld --rebuild --ship` regenerates them.
SHIPPED = Path(__file__).resolve().parent / "shipped"
SHIPPED_STAGES = ("tokenizer", "base", "mt")

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
        data=DataSizes(train=8000, validation=500, test=1000, target_train=1000),
        base=BaseSettings(),
        mt=MTSettings(),
    ),
    # CI end-to-end runs: every file and folder of the full world, small and barely trained.
    "quick": WorldSettings(
        vocab_size=1200,
        tokenizer_lines=3000,
        data=DataSizes(train=200, validation=50, test=100, target_train=100),
        base=BaseSettings(steps=40, batch=8, seq_len=64, warmup=5, instruct_steps=20, instruct_batch=8),
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
    shipped: tuple[str, ...] = ()  # stages this call copied from the package instead of training

    def data_file(self, task: str, split: str, lang: str = "en") -> Path:
        return self.data_dir / task / f"{split}.{lang}.jsonl"


def world_name(size: str = "full", seed: int = 0, mt_confusion: float | None = None) -> str:
    """`full-seed0`, or `full-seed0-mt0.2` for a world whose MT confuses another share of words
    than its size's default."""
    default = SIZES[size].mt.confusion if size in SIZES else None
    other = mt_confusion is not None and mt_confusion != default
    return f"{size}-seed{seed}" + (f"-mt{mt_confusion:g}" if other else "")


def default_root(size: str = "full", seed: int = 0, mt_confusion: float | None = None) -> Path:
    return flare_home() / "toyworld" / world_name(size, seed, mt_confusion)


def world_settings(size: str, mt_confusion: float | None = None) -> WorldSettings:
    if size not in SIZES:
        raise ConfigError(f"unknown toy world size {size!r}; choose one of: {', '.join(SIZES)}")
    if mt_confusion is not None and not 0 <= mt_confusion <= 1:
        raise ConfigError(f"--mt-confusion is a share of words, from 0 to 1; got {mt_confusion}")
    settings = SIZES[size]
    if mt_confusion is None:
        return settings
    return replace(settings, mt=replace(settings.mt, confusion=mt_confusion))


def shipped_stage(stage: str, expected_hash: str) -> Path | None:
    """The packaged copy of a trained stage with this hash, if the package holds one."""
    for folder in sorted(SHIPPED.glob(f"*/{stage}")) if SHIPPED.is_dir() else ():
        if _stage_done(folder, expected_hash):
            return folder
    return None


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_hashes(settings: WorldSettings, seed: int) -> dict[str, str]:
    """Each stage's hash covers its own settings and every stage it is built from."""
    tokenizer = _hash(GENERATOR_VERSION, seed, settings.vocab_size, settings.tokenizer_lines)
    data = _hash(GENERATOR_VERSION, DATA_VERSION, seed, asdict(settings.data))
    base = _hash(tokenizer, asdict(settings.base), asdict(settings.mix))
    mt = _hash(tokenizer, MT_VERSION, asdict(settings.mt))
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
        # The English originals of the test rows: what stage 1 scores in English (the ceiling).
        "test.en.jsonl": [english_row(ex, task, renderer, f"{task}-test-{i:05d}") for i, ex in enumerate(test)],
        "test.qtw.jsonl": [
            target_row(ex, task, renderer, f"{task}-test-{i:05d}", noise) for i, ex in enumerate(test)
        ],
        "train.qtw.jsonl": [
            target_row(ex, task, renderer, f"{task}-train-{i:05d}", None)
            for i, ex in enumerate(train[: sizes.target_train])
        ],
    }


def build(
    root: Path | None = None,
    seed: int = 0,
    size: str = "full",
    progress: Progress | None = None,
    mt_confusion: float | None = None,
    rebuild: bool = False,
) -> World:
    """Build the toy world at `root` (default: `default_root(size, seed, mt_confusion)`), or reuse a
    complete one. Trained stages the package ships with the same hash are copied, not trained.

    `mt_confusion` overrides the share of words the MT model learns wrong (its quality); `rebuild`
    retrains every stage, ignoring the cache and the shipped copies.
    `progress(description, completed, total)` is called as stages advance.
    """
    settings = world_settings(size, mt_confusion)
    root = Path(root) if root is not None else default_root(size, seed, mt_confusion)
    hashes = stage_hashes(settings, seed)
    settings_hash = _hash(hashes)
    world = World(root=root, seed=seed, size=size, base_dir=root / "base", mt_dir=root / "mt", data_dir=root / "data")
    try:
        meta = json.loads((root / WORLD_FILE).read_text())
        if not rebuild and meta.get("settings_hash") == settings_hash and all(
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
            losses = pretrain(
                tmp, tokenizer, documents, settings.base, seed, progress, instruction_examples(seed, renderer, settings.mix)
            )
        metrics.update({f"base_{name}": loss for name, loss in losses.items()})

    def make_mt(tmp: Path) -> None:
        tokenizer = nllb_tokenizer(sp_model_file.read_bytes(), tmp)
        confusions = confusion_map(seed, renderer, settings.mt.confusion) if settings.mt.confusion else None
        pairs = parallel_pairs(seed, renderer, "train", confusions)
        with restored_threads():
            metrics["mt_final_loss"] = train_mt(tmp, tokenizer, pairs, settings.mt, seed, progress)

    makers = {"tokenizer": make_tokenizer, "data": make_data, "base": make_base, "mt": make_mt}
    shipped: list[str] = []
    for stage in STAGES:
        final = root / stage
        if not rebuild and _stage_done(final, hashes[stage]):
            continue
        start = time.perf_counter()
        tmp = root / f".{stage}.{os.getpid()}.tmp"
        packaged = None if rebuild or stage not in SHIPPED_STAGES else shipped_stage(stage, hashes[stage])
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            if packaged is not None:
                shutil.copytree(packaged, tmp)
                shipped.append(stage)
            else:
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
            "shipped_stages": shipped,
            "metrics": old_metrics | metrics,
        },
    )
    return replace(world, timings=timings, shipped=tuple(shipped))


def ship(world: World) -> Path:
    """Copy a built world's trained stages into the package (maintainers: after `--rebuild`), so
    the next build with the same settings copies them instead of training."""
    dest = SHIPPED / world.root.name
    for stage in SHIPPED_STAGES:
        tmp = dest / f".{stage}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(world.root / stage, tmp)
        shutil.rmtree(dest / stage, ignore_errors=True)
        os.replace(tmp, dest / stage)
    return dest
