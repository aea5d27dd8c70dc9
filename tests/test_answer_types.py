"""benchmarks/answer_types.py: exact match per kind of answer, checked on predictions whose
per-kind scores are known by hand (docs/results.md's "where the points are" table rests on it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def answer_types():
    return load_benchmark("answer_types")


def _predictions(folder: Path, rows: list[tuple[str, bool]]) -> None:
    folder.mkdir(parents=True)
    text = "".join(json.dumps({"id": str(i), "gold": gold, "prediction": "", "correct": ok}) + "\n"
                   for i, (gold, ok) in enumerate(rows))
    (folder / "predictions.jsonl").write_text(text, encoding="utf-8")


def test_kinds_of_the_toy_worlds_answers(answer_types):
    assert [answer_types.answer_kind(a) for a in ("67", "Lagos", "leso")] == ["age", "city", "job/pet/colour"]


def test_table_scores_each_kind_and_averages_seeds(answer_types, tmp_path):
    # seed 0: age 1/2, city 1/1, words 0/1; seed 1: age 2/2, city 0/1, words 1/1
    _predictions(tmp_path / "seed0" / "eval" / "flare", [("20", True), ("31", False), ("Lagos", True), ("leso", False)])
    _predictions(tmp_path / "seed1" / "eval" / "flare", [("20", True), ("31", True), ("Lagos", False), ("leso", True)])
    lines = answer_types.table(tmp_path).splitlines()
    assert lines[0] == "| evaluation | seeds | age (n=2) | city (n=1) | job/pet/colour (n=1) |"
    assert lines[2] == "| flare | 2 | 75.0 | 50.0 | 50.0 |"


def test_a_folder_without_predictions_is_one_line(answer_types, tmp_path):
    with pytest.raises(SystemExit, match="no seed\\*/eval/\\*/predictions.jsonl under"):
        answer_types.table(tmp_path)
