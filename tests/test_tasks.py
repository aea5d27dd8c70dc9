"""Task loaders on local files in the Hub schemas, prompts, parsing and bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flare_cli.errors import ConfigError, DataError, HubError, LanguageError
from flare_cli.tasks import get_task


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tydiqa_parquet(tmp_path):
    """A local file with TyDiQA-GoldP's Hub schema (secondary_task): answers is a struct of lists."""
    rows = [
        {"id": "swahili-1", "title": "Dodoma", "context": "Dodoma ni mji mkuu wa Tanzania.",
         "question": "Mji mkuu wa Tanzania ni upi?", "answers": {"text": ["Dodoma", "mji wa Dodoma"], "answer_start": [0, 0]}},
        {"id": "thai-7", "title": "x", "context": "กรุงเทพ", "question": "ที่ไหน",
         "answers": {"text": ["กรุงเทพ"], "answer_start": [0]}},
        {"id": "swahili-2", "title": "Nairobi", "context": "Nairobi iko Kenya.",
         "question": "Nairobi iko wapi?", "answers": {"text": ["Kenya"], "answer_start": [11]}},
    ]
    path = tmp_path / "tydiqa.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_qa_loader_maps_tydiqa_schema_and_filters_by_id_prefix(tydiqa_parquet):
    rows = get_task("qa").load(str(tydiqa_parquet), "sw")
    assert [r["id"] for r in rows] == ["swahili-1", "swahili-2"]
    assert rows[0]["answer"] == "Dodoma" and rows[0]["answer_start"] == 0
    assert rows[1]["answer"] == "Kenya" and rows[1]["answer_start"] == 11
    assert rows[0]["answers"] == ["Dodoma", "mji wa Dodoma"]  # every gold answer is kept for scoring
    # ISO 639-3 and FLORES codes select the same rows
    assert [r["id"] for r in get_task("qa").load(str(tydiqa_parquet), "swh_Latn")] == ["swahili-1", "swahili-2"]


def test_language_missing_from_dataset(tydiqa_parquet):
    with pytest.raises(DataError) as err:
        get_task("qa").load(str(tydiqa_parquet), "fi")
    assert str(err.value) == f"{tydiqa_parquet}: no rows for language 'fi' (languages present: swahili, thai)"


def test_nli_loader_maps_integer_labels_and_makes_ids(tmp_path):
    path = _write_jsonl(tmp_path / "xnli.jsonl", [
        {"premise": "Mvua inanyesha.", "hypothesis": "Ni mvua.", "label": 0},
        {"premise": "Paka analala.", "hypothesis": "Paka anakimbia.", "label": 2},
    ])
    rows = get_task("nli").load(str(path), "sw", "test")
    assert [(r["id"], r["label"]) for r in rows] == [("sw-test-0", "entailment"), ("sw-test-1", "contradiction")]


def test_sentiment_csv_with_lang_column_filters_and_maps_labels(tmp_path):
    path = tmp_path / "nusax.csv"
    path.write_text("id,text,lang,label\n1,apik tenan,javanese,2\n2,alus pisan,sundanese,0\n3,ora enak,javanese,0\n")
    rows = get_task("sentiment").load(str(path), "jv")
    assert [(r["id"], r["label"]) for r in rows] == [("1", "positive"), ("3", "negative")]


def test_unknown_label_names_the_row(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "text": "t", "label": "angry"}])
    with pytest.raises(DataError) as err:
        get_task("sentiment").load(str(path), "jv")
    assert str(err.value) == (
        f"{path}: row 'a' has label 'angry'; expected one of negative, neutral, positive or 0-2"
    )


def test_no_gold_column_in_scoring_mode_but_fine_for_predict(tmp_path):
    path = _write_jsonl(tmp_path / "raw.jsonl", [{"id": "q1", "context": "c", "question": "q"}])
    with pytest.raises(DataError) as err:
        get_task("qa").load(str(path), "sw")
    assert str(err.value) == (
        f"{path}: missing column 'answer' for task 'qa' (found: context, id, question) "
        "(use --predict to run without gold)"
    )
    assert get_task("qa").load(str(path), "sw", require_gold=False)[0]["question"] == "q"


def test_empty_field_and_corrupt_and_missing_files(tmp_path):
    empty = _write_jsonl(tmp_path / "empty.jsonl", [{"id": "x", "text": "  ", "label": 1}])
    with pytest.raises(DataError, match=r"row 'x' has an empty or missing 'text'"):
        get_task("sentiment").load(str(empty), "jv")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"id": "1", "text": "a", "label": 0}\n{"id": "2", "te\n')
    with pytest.raises(DataError, match=r"corrupt.jsonl: line 2 is not valid JSON"):
        get_task("sentiment").load(str(corrupt), "jv")
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        get_task("sentiment").load(str(tmp_path / "nope.jsonl"), "jv")
    with pytest.raises(DataError, match=r"not a readable parquet file"):
        (tmp_path / "broken.parquet").write_bytes(b"PAR1garbage")
        get_task("nli").load(str(tmp_path / "broken.parquet"), "sw")


@pytest.mark.slow  # > 20 s on a shared CPU (measured with --durations)
def test_hub_dataset_offline_gives_one_line_error():
    with pytest.raises(HubError) as err:
        get_task("nli").load(None, "sw")
    assert str(err.value).startswith("cannot reach the Hub dataset facebook/xnli (config 'sw') (offline or no network)")
    assert "\n" not in str(err.value)


def test_hub_language_not_in_benchmark():
    with pytest.raises(LanguageError, match=r"XNLI has no language 'qtw'"):
        get_task("nli").load(None, "qtw")
    with pytest.raises(LanguageError, match=r"TyDiQA-GoldP has no language 'yo'"):
        get_task("qa").load(None, "yo")


def test_prompts_share_one_english_template():
    task = get_task("qa")
    row = {"id": "1", "context": "Dodoma ni mji mkuu.", "question": "Mji mkuu?",
           "pivot_context": "Dodoma is the capital.", "pivot_question": "The capital?", "answer": "Dodoma"}
    assert task.prompt(row) == "Context: Dodoma ni mji mkuu.\nQuestion: Mji mkuu?\nAnswer:"
    assert task.prompt(row, pivot=True) == "Context: Dodoma is the capital.\nQuestion: The capital?\nAnswer:"
    assert task.input_fusion_prompt(row) == (
        "Context: Dodoma is the capital.\nQuestion: The capital?\n\n"
        "Context: Dodoma ni mji mkuu.\nQuestion: Mji mkuu?\nAnswer:"
    )
    assert task.target(row) == "Dodoma"
    nli_row = {"premise": "P", "hypothesis": "H", "pivot_premise": "EP", "pivot_hypothesis": "EH", "label": "neutral"}
    fused = get_task("nli").input_fusion_prompt(nli_row)
    assert fused.startswith("Premise: EP\nHypothesis: EH\n") and fused.endswith("Premise: P\nHypothesis: H\n"
        "Does the premise entail the hypothesis? Answer entailment, neutral or contradiction.\nAnswer:")
    assert get_task("nli").target(nli_row) == "neutral"


def test_missing_pivot_column_names_file_row_and_column():
    task = get_task("sentiment")
    with pytest.raises(DataError) as err:
        task.require_pivots([{"id": "r7", "text": "apik"}], "test.jv.jsonl")
    assert str(err.value) == (
        "test.jv.jsonl: row 'r7' has no 'pivot_text' column; run `flare translate --direction test` first"
    )


def test_label_parsing():
    nli = get_task("nli")
    assert nli.parse(" Entailment.") == "entailment"
    assert nli.parse("I would say: contradiction!") == "contradiction"
    assert nli.parse("entail") is None
    assert nli.parse("neutral\ncontradiction") == "neutral"  # only the first line counts
    assert nli.parse("it is not entailment but contradiction") is None  # ambiguous
    qa = get_task("qa")
    assert qa.parse(" Dodoma\nQuestion: next") == "Dodoma"
    assert qa.parse("   \n") is None


def test_task_scores_name_their_qa_scheme():
    qa = get_task("qa")
    rows = [{"answer": "the Nile"}, {"answer": "Kenya"}]
    # TyDiQA-GoldP is scored with SQuAD v1.1 in every language: "the" goes
    scores = qa.score(["Nile", None], rows, lang="sw")
    assert scores["metric"] == "exact_match" and scores["value"] == 50.0 and scores["n_unparseable"] == 1
    assert scores["qa_metric"] == "squad"
    # free-text custom data in a non-English language defaults to MLQA's rules: no English articles
    free = get_task("custom", input_fields=["question"])
    scores = free.score(["Nile", None], rows, lang="sw")
    assert (scores["qa_metric"], scores["value"]) == ("mlqa", 0.0)
    qa.qa_metric = "unicode"
    assert qa.score(["Nile", None], rows, lang="sw")["qa_metric"] == "unicode"
    senti = get_task("sentiment")
    scores = senti.score(["positive", None], [{"label": "positive"}, {"label": "negative"}])
    assert scores["metric"] == "macro_f1" and scores["value"] == pytest.approx(100 / 3)
    assert scores["accuracy"] == 50.0


def test_custom_task_columns_template_and_labels(tmp_path):
    path = tmp_path / "topics.csv"
    path.write_text("id,headline,topic\nh1,Simba washinda,Sports\nh2,Bei ya mafuta,business\n")
    task = get_task("custom", input_fields=["headline"], labels=["sports", "business"], gold_field="topic")
    rows = task.load(str(path), "sw")
    assert [r["topic"] for r in rows] == ["sports", "business"]
    assert task.prompt(rows[0]) == "Headline: Simba washinda\nAnswer:"
    assert task.parse("Sports") == "sports"
    assert task.score(["sports", "sports"], rows)["accuracy"] == 50.0
    free = get_task("custom", input_fields=["question"])
    assert free.score(["Dodoma"], [{"answer": "dodoma"}], lang="sw")["exact_match"] == 100.0
    with pytest.raises(ConfigError, match="needs its input columns"):
        get_task("custom")
    with pytest.raises(ConfigError, match="must end with"):
        get_task("custom", input_fields=["q"], template="Q: {q}")
    with pytest.raises(ConfigError, match=r"placeholders \['x'\] must be exactly the input fields \['q'\]"):
        get_task("custom", input_fields=["q"], template="Q: {x}\nAnswer:")


def test_unknown_task():
    with pytest.raises(ConfigError) as err:
        get_task("summarize")
    assert str(err.value) == "unknown task 'summarize' (choose from qa, nli, sentiment, custom)"
