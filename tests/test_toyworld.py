"""The toy world: deterministic generation, the target grammar, tokenizers, a quick build, the cache."""

from __future__ import annotations

import importlib
import itertools
import json
import random
import re
import shutil
from collections import Counter

import pytest

from flare_cli.errors import ConfigError
from flare_cli.tasks.templates import NLI_LABELS, SENTIMENT_LABELS
from flare_cli.toyworld import TARGET_FLORES, build, default_root
from flare_cli.toyworld.build import SIZES, WORLD_FILE, stage_hashes, task_rows
from flare_cli.toyworld.language import (
    COLOURS,
    JOBS,
    OPINIONS,
    PETS,
    Fact,
    Lexicon,
    Renderer,
)
from flare_cli.toyworld.taskdata import DRAW, corrupt, render

CONTRACT_COLUMNS = {
    "qa": {"id", "context", "question", "answer", "answer_start"},
    "nli": {"id", "premise", "hypothesis", "label"},
    "sentiment": {"id", "text", "label"},
}
PIVOT_FIELDS = {"qa": ("context", "question"), "nli": ("premise", "hypothesis"), "sentiment": ("text",)}


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory):
    """One quick world per session; tests that damage a world work on a copy."""
    return build(tmp_path_factory.mktemp("toyworld") / "quick", seed=0, size="quick")


def copy_world(world, dest):
    shutil.copytree(world.root, dest)
    return dest


# --- generation -----------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_seed():
    renderer = Renderer(Lexicon.generate(0))
    sizes = SIZES["quick"].data
    first = {t: task_rows(t, 0, sizes, renderer) for t in ("qa", "nli", "sentiment")}
    again = {t: task_rows(t, 0, sizes, Renderer(Lexicon.generate(0))) for t in ("qa", "nli", "sentiment")}
    other = {t: task_rows(t, 1, sizes, Renderer(Lexicon.generate(1))) for t in ("qa", "nli", "sentiment")}
    assert first == again
    assert first["qa"]["train.en.jsonl"] != other["qa"]["train.en.jsonl"]
    assert Lexicon.generate(0) == Lexicon.generate(0)
    assert Lexicon.generate(0).words != Lexicon.generate(1).words
    assert stage_hashes(SIZES["full"], 0) == stage_hashes(SIZES["full"], 0)
    assert stage_hashes(SIZES["full"], 0)["data"] != stage_hashes(SIZES["full"], 1)["data"]


def test_target_language_shares_names_and_translates_the_rest():
    lex = Lexicon.generate(0)
    r = Renderer(lex)
    city = Fact("Anna Berg", "city", "Paris", 0)
    assert r.fact(city, "en") == "Anna Berg lives in Paris."
    # SOV: subject + topic case first, the locative-marked place, the inflected verb last.
    expected = f"Anna Berg {lex.cases['TOP']} Paris {lex.cases['LOC']} {lex.words['live']}{lex.suffixes['DECL']}."
    assert r.fact(city, "qtw") == expected
    # Noun-adjective order in the target ("car red"), adjective-noun in English ("red car").
    car = Fact("Anna Berg", "car", "red", 0)
    assert "red car" in r.fact(car, "en")
    assert f"{lex.words['car']} {lex.words['red']} {lex.cases['ACC']}" in r.fact(car, "qtw")
    # Questions: verb in the question form, then the sentence-final particle.
    question = r.question("Anna Berg", "city", 0, "qtw")
    assert question.endswith(f"{lex.words['live']}{lex.suffixes['Q']} {lex.question_particle}?")
    # Shared kinds copied, the others translated.
    assert r.answer(Fact("Anna Berg", "age", "42", 1), "qtw") == "42"
    assert r.answer(Fact("Anna Berg", "job", "baker", 1), "qtw") == lex.words["baker"] != "baker"


def test_target_text_has_no_english_content_words():
    r = Renderer(Lexicon.generate(3))
    rng = random.Random(0)
    english_words = {*JOBS, *PETS, *COLOURS, "lives", "has", "the", "of", "is", "car", "works", "what", "where"}
    for _ in range(300):
        for task in ("qa", "nli", "sentiment"):
            row = render(DRAW[task](rng), task, r, "qtw")
            words = {w.strip(".?") for field in PIVOT_FIELDS[task] for w in row[field].split()}
            assert not words & english_words, row


def test_answers_are_spans_of_the_context_in_both_languages():
    r = Renderer(Lexicon.generate(0))
    rng = random.Random(5)
    people_counts = Counter()
    for _ in range(500):
        example = DRAW["qa"](rng)
        people_counts[len({f.person for f in example.facts})] += 1
        assert 3 <= len(example.facts) <= 5
        for lang in ("en", "qtw"):
            row = render(example, "qa", r, lang)
            start = row["answer_start"]
            assert row["context"][start : start + len(row["answer"])] == row["answer"]
        names = example.facts[example.asked].person
        assert names in render(example, "qa", r, "qtw")["question"]  # names copied into the question
    assert set(people_counts) == {1, 2, 3}


def test_nli_and_sentiment_labels_follow_from_the_text():
    rng = random.Random(7)
    labels = Counter()
    for _ in range(600):
        ex = DRAW["nli"](rng)
        facts = {(f.person, f.kind): f.value for f in ex.premise}
        key = (ex.hypothesis.person, ex.hypothesis.kind)
        derived = (
            "neutral" if key not in facts else "entailment" if facts[key] == ex.hypothesis.value else "contradiction"
        )
        assert derived == ex.label
        labels[ex.label] += 1
    assert set(labels) == set(NLI_LABELS) and min(labels.values()) > 150

    r = Renderer(Lexicon.generate(0))
    for _ in range(300):
        ex = DRAW["sentiment"](rng)
        text = render(ex, "sentiment", r, "en")["text"]
        cues = {label for label in SENTIMENT_LABELS for cue in OPINIONS[label] if f" {cue} " in text}
        assert cues == {ex.label}


def test_noisy_pivots_corrupt_about_fifteen_percent_of_words():
    text = " ".join(f"word{i}" for i in range(4000))
    noisy = corrupt(text, random.Random(0))
    assert noisy == corrupt(text, random.Random(0))
    kept = set(noisy.split()) & set(text.split())
    changed = 1 - len(kept) / 4000
    assert 0.10 < changed < 0.20


# --- a quick world on disk ------------------------------------------------------------------


def test_quick_world_has_the_contract_files_and_columns(quick_world):
    sizes = SIZES["quick"].data
    for task, columns in CONTRACT_COLUMNS.items():
        train = [json.loads(x) for x in quick_world.data_file(task, "train").read_text().splitlines()]
        validation = [json.loads(x) for x in quick_world.data_file(task, "validation").read_text().splitlines()]
        test = [json.loads(x) for x in quick_world.data_file(task, "test", "qtw").read_text().splitlines()]
        target_train = [json.loads(x) for x in quick_world.data_file(task, "train", "qtw").read_text().splitlines()]
        assert (len(train), len(validation), len(test), len(target_train)) == (
            sizes.train, sizes.validation, sizes.test, sizes.target_train,
        )
        assert all(set(row) == columns for row in train + validation)
        pivots = {f"pivot_{f}" for f in PIVOT_FIELDS[task]} | ({"pivot_answer"} if task == "qa" else set())
        noisy = {f"pivot_noisy_{f}" for f in PIVOT_FIELDS[task]}
        assert all(set(row) == columns | pivots | noisy for row in test)
        assert all(set(row) == columns | pivots for row in target_train)
        # Gold translate-train rows are the English rows, translated, with the same ids.
        by_id = {row["id"]: row for row in train}
        for row in target_train:
            assert all(row[f"pivot_{f}"] == by_id[row["id"]][f] for f in PIVOT_FIELDS[task])
        assert len({row["id"] for row in train + validation + test}) == len(train + validation + test)


def test_quick_world_models_load_and_run(quick_world):
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    pieces = spm.SentencePieceProcessor(model_file=str(quick_world.root / "tokenizer" / "toy.model")).get_piece_size()
    tok = AutoTokenizer.from_pretrained(quick_world.base_dir)
    assert len(tok) == pieces == SIZES["quick"].vocab_size
    assert (tok.eos_token, tok.pad_token) == ("</s>", "<pad>") and tok.pad_token_id != tok.eos_token_id
    prompt = "Context: Anna Berg lives in Paris.\nQuestion: Where does Anna Berg live?\nAnswer: Paris"
    ids = tok(prompt).input_ids
    assert tok.unk_token_id not in ids and tok.decode(ids, skip_special_tokens=True) == prompt
    assert len(ids) < len(prompt.split()) * 2  # close to word-level: the vocabulary is really loaded

    base = AutoModelForCausalLM.from_pretrained(quick_world.base_dir)
    assert (base.config.model_type, base.config.hidden_size, base.config.num_hidden_layers) == ("llama", 64, 4)
    logits = base(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), pieces) and torch.isfinite(logits).all()

    mt_tok = AutoTokenizer.from_pretrained(quick_world.mt_dir)
    codes = mt_tok.convert_tokens_to_ids(["eng_Latn", TARGET_FLORES])
    assert mt_tok.unk_token_id not in codes and codes[0] != codes[1]
    assert len(mt_tok) == pieces + 3
    mt = AutoModelForSeq2SeqLM.from_pretrained(quick_world.mt_dir)
    assert mt.config.model_type == "m2m_100"
    mt_tok.src_lang = "eng_Latn"
    enc = mt_tok(["Anna Berg lives in Paris."], return_tensors="pt")
    assert enc.input_ids[0, 0].item() == codes[0]
    out = mt.generate(**enc, forced_bos_token_id=codes[1], max_new_tokens=5, do_sample=False)
    assert out[0, :2].tolist() == [mt_tok.eos_token_id, codes[1]]  # NLLB decoding: </s>, then the code

    meta = json.loads((quick_world.root / WORLD_FILE).read_text())
    assert (meta["seed"], meta["size"], meta["target_lang"], meta["flores"]) == (0, "quick", "qtw", "qtw_Latn")
    assert {"torch", "transformers", "flare_cli"} <= set(meta["versions"])


def test_a_complete_world_is_reused_without_retraining(quick_world):
    weights = quick_world.base_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (quick_world.mt_dir / "model.safetensors").stat().st_mtime_ns)
    again = build(quick_world.root, seed=0, size="quick")
    assert again.reused and again.timings == {}
    assert (weights.stat().st_mtime_ns, (quick_world.mt_dir / "model.safetensors").stat().st_mtime_ns) == before


def test_a_partial_world_is_resumed_not_taken_as_complete(quick_world, tmp_path):
    root = copy_world(quick_world, tmp_path / "w")
    base_mtime = (root / "base" / "model.safetensors").stat().st_mtime_ns
    # Interrupted during MT training: no world.json, no mt stage, a leftover temp folder.
    (root / WORLD_FILE).unlink()
    shutil.rmtree(root / "mt")
    (root / ".mt.12345.tmp").mkdir()
    world = build(root, seed=0, size="quick")
    assert not world.reused and set(world.timings) == {"mt"}  # only the missing stage was built
    assert (root / "base" / "model.safetensors").stat().st_mtime_ns == base_mtime
    assert (root / "mt" / "model.safetensors").is_file() and (root / WORLD_FILE).is_file()
    assert build(root, seed=0, size="quick").reused


def test_a_corrupt_or_stale_world_file_is_not_trusted(quick_world, tmp_path):
    root = copy_world(quick_world, tmp_path / "w")
    (root / WORLD_FILE).write_text("{not json")
    assert not build(root, seed=0, size="quick").reused
    assert json.loads((root / WORLD_FILE).read_text())["size"] == "quick"
    meta = json.loads((root / WORLD_FILE).read_text())
    (root / WORLD_FILE).write_text(json.dumps({**meta, "settings_hash": "0" * 16}))
    assert not build(root, seed=0, size="quick").reused
    # A stage built from other settings (another seed's data) is rebuilt, not reused.
    stage = json.loads((root / "data" / ".stage.json").read_text())
    (root / "data" / ".stage.json").write_text(json.dumps({**stage, "hash": "stale"}))
    world = build(root, seed=0, size="quick")
    assert set(world.timings) == {"data"}


def test_default_root_and_bad_size(monkeypatch, tmp_path):
    monkeypatch.setenv("FLARE_HOME", str(tmp_path / "fh"))
    assert default_root("quick", 3) == tmp_path / "fh" / "toyworld" / "quick-seed3"
    with pytest.raises(ConfigError, match=re.escape("unknown toy world size 'huge'; choose one of: full, quick")):
        build(tmp_path / "w", size="huge")
    assert not (tmp_path / "w").exists()


def test_module_entry_point_reports_a_reused_world(quick_world, capsys):
    from flare_cli.toyworld.__main__ import main

    assert main(["--size", "quick", "--seed", "0", "--root", str(quick_world.root)]) == 0
    out = capsys.readouterr().out
    assert f"toy world quick seed 0 at {quick_world.root} (reused)" in out


def test_building_leaves_the_callers_torch_threads_alone(quick_world, tmp_path):
    import torch

    root = copy_world(quick_world, tmp_path / "w")
    shutil.rmtree(root / "mt")
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # not a count training picks (1 or 2)
    try:
        assert set(build(root, seed=0, size="quick").timings) == {"mt"}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_a_root_that_is_a_file_is_a_one_line_config_error(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(ConfigError, match=r"^cannot create the toy world folder .*taken: File exists$"):
        build(tmp_path / "taken", size="quick")


def test_mt_check_scores_with_sacrebleu(quick_world):
    """The toy world's MT figures are sacrebleu's corpus chrF / chrF++ (no hand-written chrF: the old
    one counted tabs and newlines as characters and differed on short texts)."""
    import sacrebleu

    from flare_cli.toyworld.check import mt_quality, mt_translations

    pairs = mt_translations(quick_world, pairs=8)
    scores = mt_quality(quick_world, pairs=8)
    for name, (hyps, refs) in pairs.items():
        assert scores[f"{name} chrF"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
        assert scores[f"{name} chrF++"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)
        assert scores[f"{name} exact"] == sum(h == r for h, r in zip(hyps, refs)) / 8


def test_pretraining_blocks_hold_whole_documents(quick_world):
    from transformers import AutoTokenizer

    from flare_cli.toyworld.pretrain import pack

    tok = AutoTokenizer.from_pretrained(quick_world.base_dir)
    rng = random.Random(0)
    docs = [" ".join(f"Anna Berg is {rng.randint(18, 89)} years old." for _ in range(rng.randint(1, 6))) for _ in range(2000)]
    inputs, labels = pack(iter(docs * 2), tok, blocks=40, seq_len=64)
    assert inputs.shape == labels.shape == (40, 64)
    for row_ids, row_labels in zip(inputs.tolist(), labels.tolist()):
        real = [i for i, label in zip(row_ids, row_labels) if label != -100]
        assert real == row_ids[: len(real)] and real[-1] == tok.eos_token_id  # padding only at the end
        assert set(row_ids[len(real) :]) <= {tok.pad_token_id}
        texts = [t.strip() for t in tok.decode(real).split("</s>")[:-1]]
        assert texts and all(t in docs for t in texts)  # no document cut in two
    first_row = [t.strip() for t in tok.decode(inputs[0][labels[0] != -100]).split("</s>")[:-1]]
    assert first_row == docs[: len(first_row)]  # in stream order


# --- instruction tuning, the MT-quality knob, shipped stages ---------------------------------


def test_instruction_batches_put_the_loss_on_the_answer_only(quick_world):
    from transformers import AutoTokenizer

    from flare_cli.toyworld.corpus import Mix, instruction_examples
    from flare_cli.toyworld.pretrain import answer_only_batch

    tok = AutoTokenizer.from_pretrained(quick_world.base_dir)
    examples = list(itertools.islice(instruction_examples(0, Renderer(Lexicon.generate(0)), Mix()), 6))
    assert all(prompt.endswith("\nAnswer:") and answer.startswith(" ") for prompt, answer in examples)
    input_ids, mask, labels = answer_only_batch(tok, examples)
    for row, (prompt, answer) in enumerate(examples):
        n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
        answer_ids = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == answer_ids  # the answer and EOS, nothing of the prompt
        assert labels[row, :n_prompt].eq(-100).all()
        assert mask[row].sum() == n_prompt + len(answer_ids)
    shares = Counter(
        "qa" if p.startswith("Context:") else "nli" if p.startswith("Premise:") else "sentiment"
        for p, _ in itertools.islice(instruction_examples(0, Renderer(Lexicon.generate(0)), Mix()), 2000)
    )
    assert 0.75 < shares["qa"] / 2000 < 0.85 and shares["nli"] > 150 and shares["sentiment"] > 150


def test_mt_confusion_is_the_mt_quality_knob(monkeypatch, tmp_path):
    from flare_cli.toyworld.build import world_name, world_settings

    default = SIZES["full"].mt.confusion
    assert 0 < default < 1  # the demo's MT is a low-resource one
    assert world_settings("full", 0.2).mt.confusion == 0.2 and world_settings("full").mt == SIZES["full"].mt
    hashes = {n: stage_hashes(world_settings("full", n), 0) for n in (None, 0.2)}
    assert hashes[None]["base"] == hashes[0.2]["base"] and hashes[None]["mt"] != hashes[0.2]["mt"]
    monkeypatch.setenv("FLARE_HOME", str(tmp_path / "fh"))
    assert default_root("full", 0, 0.2) == tmp_path / "fh" / "toyworld" / "full-seed0-mt0.2"
    assert world_name("full", 0, default) == world_name("full", 0) == "full-seed0"
    with pytest.raises(ConfigError, match=r"^--mt-confusion is a share of words, from 0 to 1; got 1.5$"):
        build(tmp_path / "w", size="full", mt_confusion=1.5)


def test_confusions_swap_words_within_their_kind_and_spare_names_cities_numbers():
    from flare_cli.toyworld.corpus import confusion_map, english_word_types, parallel_pairs

    renderer = Renderer(Lexicon.generate(0))
    words = english_word_types(0, renderer)
    assert "teacher" in words and "is" in words and not {"Anna", "Paris", "42"} & set(words)
    for share in (0.2, 0.5):
        confusions = confusion_map(0, renderer, share)
        assert abs(len(confusions) - share * len(words)) <= 4  # rounded per kind
        for word, other in confusions.items():
            assert word != other
            for kind in (JOBS, PETS, COLOURS):
                assert (word in kind) == (other in kind)  # a job for a job, a template word for a template word
    confusions = confusion_map(0, renderer, 0.5)
    clean = list(itertools.islice(parallel_pairs(0, renderer, "train"), 200))
    confused = list(itertools.islice(parallel_pairs(0, renderer, "train", confusions), 200))
    assert [t for _, t in clean] == [t for _, t in confused]  # the target side is untouched
    changed = 0
    for (en, _), (bad, _) in zip(clean, confused):
        for a, b in zip(en.split(), bad.split(), strict=True):
            if a != b:
                changed += 1
                assert confusions[re.sub(r"[^A-Za-z]", "", a)] == re.sub(r"[^A-Za-z]", "", b)
    assert changed > 100


def test_shipped_stages_match_the_full_worlds_settings():
    """The package's trained stages were built from today's settings: changing a setting (or the
    generator) without `python -m flare_cli.toyworld --rebuild --ship` fails here."""
    from flare_cli.toyworld.build import SHIPPED, SHIPPED_STAGES, shipped_stage

    hashes = stage_hashes(SIZES["full"], 0)
    for stage in SHIPPED_STAGES:
        assert shipped_stage(stage, hashes[stage]) == SHIPPED / "full-seed0" / stage, stage
    assert (SHIPPED / "full-seed0" / "base" / "model.safetensors").stat().st_size < 4_000_000


def test_the_full_world_copies_its_shipped_stages_instead_of_training(tmp_path, monkeypatch):
    build_module = importlib.import_module("flare_cli.toyworld.build")  # the package exports build()

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped stage was trained")

    monkeypatch.setattr(build_module, "pretrain", no_training)
    monkeypatch.setattr(build_module, "train_mt", no_training)
    world = build(tmp_path / "w", seed=0, size="full")
    assert world.shipped == ("tokenizer", "base", "mt") and sum(world.timings.values()) < 60
    meta = json.loads((world.root / WORLD_FILE).read_text())
    assert meta["shipped_stages"] == ["tokenizer", "base", "mt"]
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    assert AutoModelForCausalLM.from_pretrained(world.base_dir).config.num_hidden_layers == SIZES["full"].base.layers
    assert AutoModelForSeq2SeqLM.from_pretrained(world.mt_dir).config.d_model == SIZES["full"].mt.d_model
    assert build(world.root, seed=0, size="full").reused
    # --rebuild trains again even though the cache and the package hold the stages.
    monkeypatch.setattr(build_module, "STAGES", ("tokenizer",))
    assert build(world.root, seed=0, size="full", rebuild=True).shipped == ()
