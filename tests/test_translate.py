import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures_mt import FakeEngine, build_tiny_nllb
from flare_cli import translate as tr
from flare_cli.cli import app
from flare_cli.errors import ConfigError, DataError, LanguageError
from flare_cli.translate import TranslateConfig, mark_answer, recover_answer

REPO = Path(__file__).resolve().parents[1]

SENTENCES = [
    "The cat sat on the mat.",
    "Rain fell.",
    "Fishermen sell their catch at the market near the harbour every single morning before the sun rises.",
    "A dog runs in the park!",
    "Where is the river?",
    "She answered the question with a short word and then the children read books at school.",
    "Paris",
    "The children read books at school in the afternoon.",
]


@pytest.fixture(scope="session")
def tiny_mt(tmp_path_factory):
    return build_tiny_nllb(tmp_path_factory.mktemp("mt"))


@pytest.fixture(scope="session")
def reference(tiny_mt):
    """Translate one text at a time with plain transformers (no batching, no cache)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mt)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_mt).eval()

    def translate(text, src="eng_Latn", tgt="swh_Latn", max_new_tokens=12):
        tok.src_lang = src
        with torch.inference_mode():
            out = model.generate(
                **tok([text], return_tensors="pt"), forced_bos_token_id=tok.convert_tokens_to_ids(tgt),
                num_beams=1, max_new_tokens=max_new_tokens, do_sample=False,
            )
        return tok.decode(out[0], skip_special_tokens=True)

    return translate


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def sentiment_rows():
    return [{"id": f"r{i}", "text": s, "label": "neutral"} for i, s in enumerate(SENTENCES)]


def cfg_for(tiny_mt, tmp_path, **kw):
    base = dict(
        input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out" / "out.jsonl"), lang="sw", task="sentiment",
        mt_model=str(tiny_mt), num_beams=1, max_new_tokens=12, batch_tokens=48,
    )
    base.update(kw)
    return TranslateConfig(**base)


def test_batched_sorted_output_matches_one_at_a_time_in_input_order(tiny_mt, reference, tmp_path):
    rows = sentiment_rows()
    write_jsonl(tmp_path / "in.jsonl", rows)
    result = tr.run(cfg_for(tiny_mt, tmp_path))
    out = read_jsonl(result.output)
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert [r["pivot_text"] for r in out] == SENTENCES
    assert [r["text"] for r in out] == [reference(s) for s in SENTENCES]
    assert len({r["text"] for r in out}) > 4  # the tiny model really depends on its input
    assert all(r["label"] == "neutral" for r in out)
    assert (result.rows_in, result.rows_out, result.translated, result.cache_hits) == (8, 8, 8, 0)
    meta = json.loads(Path(result.meta_path).read_text())
    assert meta["src_lang"] == "eng_Latn" and meta["tgt_lang"] == "swh_Latn"
    assert meta["num_beams"] == 1 and meta["max_new_tokens"] == 12 and meta["engine"] == "transformers"
    assert meta["revision"].startswith("local:") and meta["flare_cli_version"]
    assert "text" not in meta and all(not k.startswith("_") for k in out[0])


def test_direction_test_adds_english_pivots(tiny_mt, reference, tmp_path):
    rows = [{"id": "1", "premise": "Rain fell.", "hypothesis": "The cat sat on the mat.", "label": "neutral"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    result = tr.run(cfg_for(tiny_mt, tmp_path, task="nli", direction="test", lang="swh_Latn"))
    (out,) = read_jsonl(result.output)
    assert out["premise"] == "Rain fell." and out["hypothesis"] == "The cat sat on the mat."
    assert out["pivot_premise"] == reference("Rain fell.", src="swh_Latn", tgt="eng_Latn")
    assert out["pivot_hypothesis"] == reference("The cat sat on the mat.", src="swh_Latn", tgt="eng_Latn")
    assert (result.src, result.tgt) == ("swh_Latn", "eng_Latn")


def test_rerun_translates_nothing_and_decoding_settings_are_part_of_the_key(tiny_mt, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", sentiment_rows())
    first = tr.run(cfg_for(tiny_mt, tmp_path))
    data = Path(first.output).read_bytes()
    second = tr.run(cfg_for(tiny_mt, tmp_path))
    assert (second.translated, second.cache_hits, second.generated_tokens) == (0, 8, 0)
    assert Path(second.output).read_bytes() == data
    third = tr.run(cfg_for(tiny_mt, tmp_path, max_new_tokens=5))
    assert (third.translated, third.cache_hits) == (8, 0)
    db = tmp_path / "out" / ".flare_cache" / "translations.sqlite"
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM translations").fetchone()[0] == 16


def test_long_text_is_split_into_sentences_and_rejoined(tiny_mt, reference, tmp_path):
    long_text = " ".join(SENTENCES[:6])
    write_jsonl(tmp_path / "in.jsonl", [{"id": "long", "text": long_text, "label": "neutral"}])
    result = tr.run(cfg_for(tiny_mt, tmp_path, max_input_tokens=30))
    (out,) = read_jsonl(result.output)
    parts = tr.split_segments(long_text, tr.HFTranslator(str(tiny_mt)).count_tokens, 30)
    assert parts[:2] == ["The cat sat on the mat.", "Rain fell."] and len(parts) >= 6
    assert out["text"] == " ".join(reference(p) for p in parts)
    assert out["pivot_text"] == long_text


def test_split_segments_cuts_overlong_sentences_by_words():
    def n_tokens(texts):  # one token per word plus language tag and EOS
        return [len(t.split()) + 2 for t in texts]

    text = "one two three four five six seven eight nine ten. Short one."
    assert tr.split_segments(text, n_tokens, 8) == ["one two three four five six", "seven eight nine ten.", "Short one."]
    assert tr.split_segments("tiny text", n_tokens, 8) == ["tiny text"]


def test_batch_by_tokens_respects_budget():
    lengths = {"a": 10, "b": 9, "c": 9, "d": 3, "e": 2}
    batches = list(tr.batch_by_tokens(list(lengths), lengths, 20))
    assert batches == [["a", "b"], ["c", "d"], ["e"]]
    assert list(tr.batch_by_tokens(["a"], lengths, 5)) == [["a"]]  # one over-long row still runs alone


def test_empty_strings_are_kept_empty_without_translation(tiny_mt, tmp_path):
    rows = [{"id": "e1", "text": "", "label": "neutral"}, {"id": "e2", "text": "   ", "label": "neutral"},
            {"id": "x", "text": "Rain fell.", "label": "neutral"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    result = tr.run(cfg_for(tiny_mt, tmp_path))
    out = read_jsonl(result.output)
    assert [r["text"] for r in out[:2]] == ["", ""]
    assert [r["pivot_text"] for r in out[:2]] == ["", "   "]
    assert result.translated == 1


def test_kill_and_resume_loses_nothing_and_gives_identical_output(tiny_mt, tmp_path):
    rows = [{"id": str(i), "text": f"{s} {SENTENCES[(i + 3 + i // 8) % 8]}", "label": "neutral"}
            for i, s in enumerate(SENTENCES * 2)]
    assert len({r["text"] for r in rows}) == 16
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def flare(out, extra_env=None):
        cmd = [sys.executable, "-m", "flare_cli", "translate", "-i", str(data), "-o", str(out), "-l", "sw",
               "-t", "sentiment", "--mt-model", str(tiny_mt), "--num-beams", "1", "--max-new-tokens", "12",
               "--batch-tokens", "40", "--quiet", "--json"]
        return subprocess.run(cmd, cwd=REPO, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=300)

    killed = flare(tmp_path / "a" / "out.jsonl", {tr.KILL_AFTER_BATCHES_ENV: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "a" / "out.jsonl").exists()
    cached = sqlite3.connect(tmp_path / "a" / ".flare_cache" / "translations.sqlite").execute(
        "SELECT COUNT(*) FROM translations").fetchone()[0]
    assert 0 < cached < 16

    resumed = flare(tmp_path / "a" / "out.jsonl")
    assert resumed.returncode == 0, resumed.stderr
    stats = json.loads(resumed.stdout)
    assert (stats["cache_hits"], stats["translated"]) == (cached, 16 - cached)

    clean = tr.run(TranslateConfig(input=str(data), output=str(tmp_path / "b" / "out.jsonl"), lang="sw",
                                   task="sentiment", mt_model=str(tiny_mt), num_beams=1, max_new_tokens=12))
    assert clean.translated == 16
    assert (tmp_path / "a" / "out.jsonl").read_bytes() == (tmp_path / "b" / "out.jsonl").read_bytes()


# ------------------------------------------------------------------------------ QA projection


def test_mark_answer_uses_offset_then_falls_back_to_search():
    ctx = 'He said "go" and Paris was big. Paris is old.'
    assert mark_answer(ctx, "Paris", 32) == ('He said "go" and Paris was big. "Paris" is old.', 2)
    assert mark_answer(ctx, "Paris", 3) == ('He said "go" and "Paris" was big. Paris is old.', 2)  # wrong offset
    assert mark_answer(ctx, "London", None) is None
    assert mark_answer(ctx, "", 0) is None


def test_recover_answer_handles_other_quote_styles_and_spaces():
    assert recover_answer("Alisema \u00ab nenda \u00bb na Parisi ni kubwa.", 0, 0) == (
        "Alisema  nenda  na Parisi ni kubwa.", "nenda", 9)
    text = 'Alisema \u201cnenda\u201d na \u201cParisi\u201d ni kubwa.'
    context, answer, start = recover_answer(text, 2, 2)
    assert (answer, context[start:start + len(answer)]) == ("Parisi", "Parisi")
    assert context == "Alisema \u201cnenda\u201d na Parisi ni kubwa."
    assert recover_answer("Parisi ni kubwa.", 0, 0) is None  # the marker quotes were lost
    assert recover_answer('Parisi "" ni kubwa.', 0, 0) is None  # empty span


class WordEngine(FakeEngine):
    """A deterministic word-by-word MT engine: enough to exercise projection end to end."""

    engine, model_id = "words", "test/words"

    LEXICON = {"paris": "Parisi", "is": "ni", "the": "", "capital": "mji-mkuu", "of": "wa", "france": "Ufaransa",
               "what": "nini", "rain": "mvua", "fell": "ilinyesha", "cat": "paka"}

    def translate_batch(self, texts, src, tgt, num_beams, max_new_tokens):
        outs = []
        for text in texts:
            words = []
            for word in text.split():
                core = word.strip('".?,')
                new = self.LEXICON.get(core.lower(), core.upper())
                if "cat" in text:  # this engine loses quotes around cats, and reorders
                    word = word.replace('"', "")
                words.append(word.replace(core, new) if core else word)
            if "cat" in text:
                words.reverse()
            outs.append(" ".join(w for w in words if w.strip('"')))
        return outs, sum(len(o.split()) for o in outs)


def qa_rows():
    return [
        {"id": "q1", "context": "Paris is the capital of France.", "question": "What is the capital?",
         "answer": "France", "answer_start": 24},
        {"id": "q2", "context": "The cat fell.", "question": "What fell?", "answer": "cat"},  # quotes lost, word matched
        {"id": "q3", "context": "The cat is Paris.", "question": "What?", "answer": "is Paris"},  # quotes lost, no match
        {"id": "q4", "context": "Rain fell.", "question": "What fell?", "answer": "snow"},  # not in the source
        {"id": "q5", "context": "Rain fell.", "question": "Anything?", "answer": ""},
    ]


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_qa_train_projects_answers_and_counts_failures(tmp_path, policy):
    write_jsonl(tmp_path / "in.jsonl", qa_rows())
    cfg = TranslateConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"), lang="sw",
                          task="qa", on_projection_failure=policy)
    result = tr.run(cfg, engine=WordEngine())
    out = {r["id"]: r for r in read_jsonl(result.output)}
    assert result.projection_failed == 2 and result.projection_failed_ids == ["q3", "q4"]
    q1 = out["q1"]
    assert q1["context"] == "Parisi ni mji-mkuu wa Ufaransa." and q1["question"] == "nini ni mji-mkuu?"
    assert (q1["answer"], q1["answer_start"]) == ("Ufaransa", 22)
    assert q1["context"][22:30] == "Ufaransa"
    assert q1["pivot_context"] == "Paris is the capital of France." and q1["pivot_question"] == "What is the capital?"
    assert (out["q2"]["context"], out["q2"]["answer"], out["q2"]["answer_start"]) == ("ilinyesha. paka", "paka", 11)
    assert (out["q5"]["answer"], out["q5"]["answer_start"]) == ("", None)
    if policy == "keep":
        assert list(out) == ["q1", "q2", "q3", "q4", "q5"]
        assert (out["q3"]["answer"], out["q3"]["answer_start"]) == ("ni Parisi", None)
        assert out["q3"]["context"] == "Parisi. ni paka"
    else:
        assert list(out) == ["q1", "q2", "q5"]
    meta = json.loads(Path(result.meta_path).read_text())
    assert (meta["projection_failed"], meta["rows_out"], meta["on_projection_failure"]) == (2, len(out), policy)


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_an_answer_the_mt_erases_drops_its_row_whatever_the_policy(tmp_path, policy):
    """A low-resource MT can translate an answer to nothing: kept, the row would be unanswerable
    (training refuses it), so it is dropped and counted, under keep as under drop."""
    rows = qa_rows()[:1] + [{"id": "q6", "context": "Paris is the capital.", "question": "Which?", "answer": "the",
                             "answer_start": 9}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    cfg = TranslateConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"), lang="sw",
                          task="qa", on_projection_failure=policy)
    result = tr.run(cfg, engine=WordEngine())
    assert [r["id"] for r in read_jsonl(result.output)] == ["q1"]
    assert result.projection_failed_ids == ["q6"]
    assert result.empty_answers_dropped == (1 if policy == "keep" else 0)  # under drop it is a plain failure
    assert json.loads(Path(result.meta_path).read_text())["empty_answers_dropped"] == result.empty_answers_dropped


def test_qa_projection_failure_error_policy(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", qa_rows())
    cfg = TranslateConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"), lang="sw",
                          task="qa", on_projection_failure="error")
    with pytest.raises(DataError) as err:
        tr.run(cfg, engine=WordEngine())
    assert str(err.value) == ("2 of 5 rows failed answer projection (ids: q3, q4); translations are cached, "
                              "rerun with --on-projection-failure keep or drop")
    assert not (tmp_path / "out.jsonl").exists()
    rerun = tr.run(TranslateConfig(**{**cfg.__dict__, "on_projection_failure": "keep"}), engine=WordEngine())
    assert rerun.translated == 0


# -------------------------------------------------------------------------------- bad input


def test_missing_column_is_a_data_error(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "txt": "hello"}])
    cfg = TranslateConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "o.jsonl"), lang="sw", task="sentiment")
    with pytest.raises(DataError, match=r"in\.jsonl: the data has no column 'text' \(columns: id, txt\)$"):
        tr.run(cfg, engine=WordEngine())


def test_non_utf8_and_bad_json_are_data_errors(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"id": "1", "text": "caf\u00e9"}\n'.encode("latin-1"))
    cfg = TranslateConfig(input=str(tmp_path / "latin1.jsonl"), output=str(tmp_path / "o.jsonl"), lang="sw", task="sentiment")
    with pytest.raises(DataError, match=r"latin1\.jsonl: not UTF-8 text \(byte 0xe9 at offset 24\)$"):
        tr.run(cfg, engine=WordEngine())
    (tmp_path / "bad.jsonl").write_text('{"id": "1", "text": "a"}\n{"id": 2,\n')
    cfg.input = str(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: not valid JSON"):
        tr.run(cfg, engine=WordEngine())
    write_jsonl(tmp_path / "null.jsonl", [{"id": "n", "text": None}])
    cfg.input = str(tmp_path / "null.jsonl")
    with pytest.raises(DataError, match=r"row n column 'text' is NoneType, expected text$"):
        tr.run(cfg, engine=WordEngine())


def test_config_errors(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", sentiment_rows())
    base = dict(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "o.jsonl"), lang="sw", task="sentiment")
    with pytest.raises(LanguageError, match="did you mean swh_Latn"):
        tr.run(TranslateConfig(**{**base, "lang": "swx"}), engine=WordEngine())
    with pytest.raises(ConfigError, match="needs --fields"):
        tr.run(TranslateConfig(**{**base, "task": "custom"}), engine=WordEngine())
    with pytest.raises(ConfigError, match=r"use a \.jsonl or \.parquet file name"):
        tr.run(TranslateConfig(**{**base, "output": str(tmp_path / "o.txt")}), engine=WordEngine())
    with pytest.raises(ConfigError, match="got English"):
        tr.run(TranslateConfig(**{**base, "lang": "en-GB"}), engine=WordEngine())
    with pytest.raises(DataError, match="input file not found"):
        tr.run(TranslateConfig(**{**base, "input": str(tmp_path / "nope.jsonl")}), engine=WordEngine())


def test_custom_fields_parquet_round_trip(tmp_path):
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "a": "Rain fell.", "b": "cat", "n": 3}])
    cfg = TranslateConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "o.parquet"), lang="sw",
                          task="custom", fields=("a", "b"))
    tr.run(cfg, engine=WordEngine())
    assert pq.read_table(tmp_path / "o.parquet").to_pylist() == [
        {"id": "1", "a": "mvua ilinyesha.", "b": "paka", "n": 3, "pivot_a": "Rain fell.", "pivot_b": "cat"}]


# ---------------------------------------------------------------------------------------- CLI


def test_cli_pipeline_stdin_to_stdout(tiny_mt, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = sentiment_rows()[:3]
    stdin = "".join(json.dumps(r) + "\n" for r in rows)
    result = CliRunner().invoke(app, ["translate", "-i", "-", "-o", "-", "-l", "swa", "-t", "sentiment",
                                      "--mt-model", str(tiny_mt), "--num-beams", "1", "--max-new-tokens", "12"],
                                input=stdin)
    assert result.exit_code == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in out] == [reference(r["text"]) for r in rows]
    assert "3/3 rows eng_Latn -> swh_Latn" in result.stderr
    # stderr is no terminal here: no progress bar, and not the blank line rich would leave
    assert "\n\n" not in result.stderr and "translating" not in result.stderr
    assert (tmp_path / ".flare_cache" / "translations.sqlite").exists()


def test_cli_unknown_language_exits_2(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", sentiment_rows())
    result = CliRunner().invoke(app, ["translate", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                                      "-l", "xx-YY", "-t", "sentiment"])
    assert result.exit_code == 2
    assert "unknown language code 'xx-YY'" in " ".join(result.stderr.split())


# -------------------------------------------------------------------------------- --references


def test_references_score_the_output_with_sacrebleu(tmp_path):
    import sacrebleu

    rows = [{"id": "n1", "text": "Rain fell.", "ref": "mvua ilinyesha."},
            {"id": "n2", "text": "The cat fell.", "ref": "paka alianguka."}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    cfg = TranslateConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"), lang="sw",
                          task="sentiment", references="ref")
    result = tr.run(cfg, engine=WordEngine())
    hyps = [r["text"] for r in read_jsonl(result.output)]
    refs = [r["ref"] for r in rows]
    quality = result.quality["text"]
    assert quality["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert quality["chrf++"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)
    assert quality["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert json.loads(Path(result.meta_path).read_text())["quality"] == result.quality
    # a .txt file of references, one per row, scores the same
    (tmp_path / "refs.txt").write_text("mvua ilinyesha.\npaka alianguka.\n")
    again = tr.run(TranslateConfig(**{**cfg.__dict__, "references": str(tmp_path / "refs.txt")}), engine=WordEngine())
    assert again.quality == result.quality


def test_references_are_checked_before_translating(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "n1", "text": "Rain fell."}])
    cfg = TranslateConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"), lang="sw",
                          task="sentiment", references="ref")
    with pytest.raises(DataError, match=r"^--references: row 'n1' has no text in column 'ref'$"):
        tr.run(cfg, engine=WordEngine())
    (tmp_path / "refs.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"refs.txt: 2 lines for 1 rows$"):
        tr.run(TranslateConfig(**{**cfg.__dict__, "references": str(tmp_path / "refs.txt")}), engine=WordEngine())
    write_jsonl(tmp_path / "nli.jsonl", [{"id": "n1", "premise": "Rain fell.", "hypothesis": "It fell.", "ref": "x"}])
    qa = TranslateConfig(input=str(tmp_path / "nli.jsonl"), output=str(tmp_path / "o.jsonl"), lang="sw",
                         task="nli", references="ref")
    with pytest.raises(ConfigError, match=r"name a column per field \(field=column,...\) for premise, hypothesis"):
        tr.run(qa, engine=WordEngine())
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_references_summary_line_and_json(tiny_mt, reference, tmp_path):
    import sacrebleu

    rows = [dict(r, ref=reference(r["text"]) if i else "something else entirely") for i, r in enumerate(sentiment_rows()[:3])]
    write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["translate", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "-l", "sw", "-t",
            "sentiment", "--mt-model", str(tiny_mt), "--num-beams", "1", "--max-new-tokens", "12", "--references", "ref"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    hyps = [r["text"] for r in read_jsonl(tmp_path / "out.jsonl")]
    refs = [r["ref"] for r in rows]
    chrf = sacrebleu.corpus_chrf(hyps, [refs]).score
    assert f"text: chrF {chrf:.1f}" in result.stdout and "nrefs:1|case:mixed|eff:yes|nc:6|nw:2" in result.stdout
    as_json = CliRunner().invoke(app, args + ["--json"])
    assert json.loads(as_json.stdout)["quality"]["text"]["chrf"] == pytest.approx(chrf)


def test_qa_train_replaces_the_english_gold_list_with_the_projected_answer(tmp_path):
    # TyDiQA rows carry every gold answer in `answers`; after translate-train only the first one,
    # translated and projected, is target-language gold: the English list moves to pivot_answers.
    rows = [{**qa_rows()[0], "answers": ["France", "the French Republic"]}, {**qa_rows()[4], "answers": []}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    cfg = TranslateConfig(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out.jsonl"), lang="sw", task="qa")
    out = {r["id"]: r for r in read_jsonl(tr.run(cfg, engine=WordEngine()).output)}
    assert (out["q1"]["answers"], out["q1"]["pivot_answers"]) == (["Ufaransa"], ["France", "the French Republic"])
    assert (out["q5"]["answers"], out["q5"]["pivot_answers"]) == ([], [])
