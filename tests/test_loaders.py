"""Hub loaders against datasets built locally in the real Hub schemas (no network).

``datasets.load_dataset`` is replaced by a fake that checks the id/config/split a loader asks for
and returns a real ``datasets.Dataset`` with the features the current dataset cards list.
"""

import datasets
import pytest

from flare_cli.errors import ConfigError, DataError
from flare_cli.tasks import get_task
from flare_cli.tasks.base import parse_columns

TYDIQA_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "title": datasets.Value("string"), "context": datasets.Value("string"),
    "question": datasets.Value("string"),
    "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
})
XNLI_FEATURES = datasets.Features({
    "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
    "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
})
NUSAX_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "text": datasets.Value("string"), "lang": datasets.Value("string"),
    "label": datasets.ClassLabel(names=["negative", "neutral", "positive"]),
})


class FakeHub:
    """Answers load_dataset(...) calls from a table of (args, kwargs) -> Dataset or exception."""

    def __init__(self, monkeypatch, answers):
        self.answers, self.calls = answers, []
        monkeypatch.setattr(datasets, "load_dataset", self)

    def __call__(self, path, name=None, **kwargs):
        key = (path, name, tuple(sorted(kwargs.items())))
        self.calls.append(key)
        answer = self.answers[key]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_tydiqa_goldp_from_the_hub_keeps_every_gold_answer(monkeypatch):
    table = datasets.Dataset.from_list([
        {"id": "swahili-11", "title": "T", "context": "Dodoma ni mji mkuu.", "question": "Mji mkuu?",
         "answers": {"text": ["Dodoma", "mji wa Dodoma"], "answer_start": [0, 0]}},
        {"id": "finnish-3", "title": "T", "context": "Helsinki.", "question": "?",
         "answers": {"text": ["Helsinki"], "answer_start": [0]}},
    ], features=TYDIQA_FEATURES)
    hub = FakeHub(monkeypatch, {
        ("google-research-datasets/tydiqa", "secondary_task", (("split", "validation"),)): table,
    })
    rows = get_task("qa").load(None, "sw")
    assert hub.calls == [("google-research-datasets/tydiqa", "secondary_task", (("split", "validation"),))]
    assert [(r["id"], r["answer"], r["answers"], r["answer_start"]) for r in rows] == [
        ("swahili-11", "Dodoma", ["Dodoma", "mji wa Dodoma"], 0)]
    task = get_task("qa")
    # the second gold answer counts: "mji wa Dodoma" matches exactly
    assert task.score(["mji wa Dodoma"], rows, lang="sw")["exact_match"] == 100.0


@pytest.mark.parametrize("lang", ["ja", "th", "yo"])
def test_tydiqa_goldp_has_no_japanese_or_thai(lang):
    from flare_cli.errors import LanguageError

    with pytest.raises(LanguageError, match=f"TyDiQA-GoldP has no language '{lang}' .*available: ar, bn, en, fi, id, ko, ru, sw, te\\)"):
        get_task("qa").load(None, lang)


def test_xnli_per_language_config_and_class_labels(monkeypatch):
    table = datasets.Dataset.from_list([
        {"premise": "Mvua inanyesha.", "hypothesis": "Ni mvua.", "label": 0},
        {"premise": "Paka analala.", "hypothesis": "Paka anakimbia.", "label": 2},
    ], features=XNLI_FEATURES)
    hub = FakeHub(monkeypatch, {("facebook/xnli", "sw", (("split", "test"),)): table})
    rows = get_task("nli").load(None, "swh")  # ISO 639-3 resolves to XNLI's config name
    assert hub.calls[0][1] == "sw"
    assert [(r["id"], r["label"]) for r in rows] == [("sw-test-0", "entailment"), ("sw-test-1", "contradiction")]


def test_nusax_script_repo_is_read_from_the_parquet_export(monkeypatch):
    table = datasets.Dataset.from_list([
        {"id": "1", "text": "apik tenan", "lang": "jav", "label": 2},
        {"id": "2", "text": "ora enak", "lang": "jav", "label": 0},
    ], features=NUSAX_FEATURES)
    hub = FakeHub(monkeypatch, {
        ("indonlp/NusaX-senti", "jav", (("split", "test"),)):
            RuntimeError("Dataset scripts are no longer supported, but found NusaX-senti.py"),
        ("indonlp/NusaX-senti", None, (("data_dir", "jav"), ("revision", "refs/convert/parquet"), ("split", "test"))): table,
    })
    rows = get_task("sentiment").load(None, "jv")
    assert len(hub.calls) == 2
    assert [(r["id"], r["label"]) for r in rows] == [("1", "positive"), ("2", "negative")]


@pytest.mark.parametrize("lang, config", [("jv", "jav"), ("jav", "jav"), ("su", "sun"), ("id", "ind"),
                                          ("en", "eng"), ("bbc", "bbc"), ("javanese", "jav"), ("jav_Latn", "jav")])
def test_nusax_configs_are_iso_639_3(lang, config):
    assert get_task("sentiment").hub_config(lang) == config


def test_script_dataset_without_export_is_one_data_error(monkeypatch):
    script = RuntimeError("Dataset scripts are no longer supported, but found old.py")
    FakeHub(monkeypatch, {
        ("someone/old", None, (("split", "test"),)): script,
        ("someone/old", None, (("data_dir", "default"), ("revision", "refs/convert/parquet"), ("split", "test"))):
            FileNotFoundError("Unable to find 'hf://datasets/someone/old@refs/convert/parquet/default/'"),
    })
    with pytest.raises(DataError) as err:
        get_task("nli").load("someone/old", "sw")
    message = str(err.value)
    assert message.startswith(f"dataset someone/old needs its loading script, which datasets {datasets.__version__} no longer runs")
    assert "\n" not in message and message.endswith("pass the file with --data")


def test_any_hub_dataset_with_config_split_and_column_mapping(monkeypatch):
    table = datasets.Dataset.from_list([
        {"qid": "a1", "passage": "Nairobi iko Kenya.", "q": "Nairobi iko wapi?", "answers": ["Kenya", "nchini Kenya"]},
    ])
    hub = FakeHub(monkeypatch, {("me/sw-qa", "v2", (("split", "dev"),)): table})
    columns = parse_columns("context=passage,question=q,id=qid")
    rows = get_task("qa").load("me/sw-qa", "sw", "dev", config="v2", columns=columns)
    assert hub.calls[0][:2] == ("me/sw-qa", "v2")  # not TyDiQA's secondary_task
    assert (rows[0]["id"], rows[0]["context"], rows[0]["answer"], rows[0]["answers"]) == (
        "a1", "Nairobi iko Kenya.", "Kenya", ["Kenya", "nchini Kenya"])


def test_column_mapping_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"--columns: 'question' is not ours=theirs"):
        parse_columns("question")
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "1", "passage": "c", "q": "q", "answer": "a"}\n')
    with pytest.raises(DataError) as err:
        get_task("qa").load(str(path), "sw", columns={"context": "text"})
    assert str(err.value) == f"{path}: --columns names 'text', which is not a column (found: answer, id, passage, q)"
    rows = get_task("qa").load(str(path), "sw", columns={"context": "passage", "question": "q"})
    assert rows[0]["context"] == "c" and "passage" not in rows[0]
