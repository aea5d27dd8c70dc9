"""Metric values computed by hand from the published definitions.

QA expectations follow the official scripts' behaviour, case by case: SQuAD v1.1 evaluate-v1.1.py
(lower-case, delete ASCII ``string.punctuation``, delete a/an/the, whitespace tokens, F1 0 without a
shared token, max over gold answers) and MLQA mlqa_evaluation_v1.py (Unicode P* punctuation too,
per-language articles, zh mixed segmentation). MT figures come from sacrebleu itself.
"""

import pytest

from flare_cli.errors import ConfigError
from flare_cli.metrics import (
    accuracy,
    answer_tokens,
    classification_scores,
    default_qa_metric,
    exact_match,
    macro_f1,
    mt_scores,
    normalize_answer,
    qa_scores,
    token_f1,
)


# -- squad (evaluate-v1.1.py) ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "prediction, gold",
    [
        ("U.S.A.", "USA"),  # punctuation is deleted, not turned into spaces
        ("$100", "100"),  # $ + ~ are in string.punctuation
        ("C++", "c"),
        ("~5 km", "5 km"),
        ("1,000", "1000"),
        ("3.14", "314"),  # the official script's own quirk
        ("The Eiffel Tower", "Eiffel Tower"),
        ("an apple", "apple"),
        ("  Nairobi \t", "nairobi"),
    ],
)
def test_squad_exact_match_cases(prediction, gold):
    assert exact_match(prediction, gold, "en", "squad") == 1.0


@pytest.mark.parametrize(
    "prediction, gold",
    [
        ("Theatre", "atre"),  # articles are whole words only
        ("1 000", "1000"),
        ("Straße", "STRASSE"),  # str.lower, no casefold
        ("«Dar es Salaam»", "Dar es Salaam"),  # « » are not ASCII punctuation
        ("Ｎａｉｒｏｂｉ", "Nairobi"),  # no NFKC
    ],
)
def test_squad_exact_mismatch_cases(prediction, gold):
    assert exact_match(prediction, gold, "en", "squad") == 0.0


def test_squad_removes_english_articles_in_every_language():
    # The official script knows no language: "a" goes even where it is a Swahili word.
    assert normalize_answer("mji wa a", "sw", "squad") == "mji wa"
    assert exact_match("the Nile", "Nile", "sw", "squad") == 1.0


def test_squad_f1_by_hand():
    # "Dar es-Salaam" -> {dar, essalaam} vs {dar, es, salaam}: 1 shared, P 1/2, R 1/3 -> F1 0.4
    assert token_f1("Dar es-Salaam", "Dar es Salaam", "en", "squad") == pytest.approx(0.4)
    # « and » stick to their words: {«dar, es, salaam»} vs {dar, es, salaam}: P = R = 1/3
    assert token_f1("«Dar es Salaam»", "Dar es Salaam", "en", "squad") == pytest.approx(1 / 3)
    # CJK and Thai are one whitespace token each: no partial credit
    assert token_f1("東京都", "東京", "ja", "squad") == 0.0
    assert token_f1("กรุงเทพ", "กรุงเทพมหานคร", "th", "squad") == 0.0


def test_squad_takes_the_best_gold_answer():
    assert exact_match("Paris", ["Paris, France", "Paris"], "en", "squad") == 1.0
    # vs "Paris": P 1/2, R 1 -> 2/3; vs "the city of Paris" -> {city, of, paris}: P 1/2, R 1/3 -> 0.4
    assert token_f1("Paris France", ["the city of Paris", "Paris"], "en", "squad") == pytest.approx(2 / 3)
    assert exact_match("Paris France", ["the city of Paris", "Paris"], "en", "squad") == 0.0


def test_squad_empty_answers():
    # Both normalize to "": exact match 1, but v1.1's F1 is 0 without a shared token.
    assert exact_match("the", "a", "en", "squad") == 1.0
    assert token_f1("the", "a", "en", "squad") == 0.0
    assert exact_match("...", "jibu", "sw", "squad") == 0.0
    assert exact_match(None, "jibu") == 0.0
    assert token_f1(None, ["jibu", "x"]) == 0.0


# -- mlqa (mlqa_evaluation_v1.py) -----------------------------------------------------------------
@pytest.mark.parametrize(
    "prediction, gold, lang",
    [
        ("«Dar es Salaam»", "Dar es Salaam", "sw"),  # Unicode punctuation goes too
        ("U.S.A.", "USA", "en"),
        ("$100", "100", "en"),
        ("¿Dónde?", "dónde", "es"),
        ("el Nilo", "Nilo", "es"),
        ("der Rhein", "Rhein", "de"),
        ("của Hà Nội", "Hà Nội", "vi"),
        ("भारत।", "भारत", "hi"),  # the danda is Unicode punctuation
        ("مدينة القاهرة", "مدينة قاهرة", "ar"),
        ("北京市。", "北京 市", "zh"),
    ],
)
def test_mlqa_exact_match_cases(prediction, gold, lang):
    assert exact_match(prediction, gold, lang, "mlqa") == 1.0
    # ISO 639-3 and FLORES codes name the same language
    if lang == "es":
        assert exact_match(prediction, gold, "spa_Latn", "mlqa") == 1.0


def test_mlqa_articles_are_per_language():
    assert exact_match("el Nilo", "Nilo", "en", "mlqa") == 0.0
    assert exact_match("the Nile", "Nile", "de", "mlqa") == 0.0
    assert normalize_answer("mji wa a", "sw", "mlqa") == "mji wa a"  # outside MLQA's seven: no articles
    # Arabic: every "ال" is deleted, inside words too, as the script's pattern does
    assert normalize_answer("سلال", "ar", "mlqa") == "سل"


def test_mlqa_chinese_mixed_segmentation():
    assert answer_tokens("iPhone 手机", "zh", "mlqa") == ["iphone", "手", "机"]
    # 東京都 vs 東京: 3 vs 2 character tokens, 2 shared: P 2/3, R 1 -> F1 0.8
    assert token_f1("東京都", "東京", "zh", "mlqa") == pytest.approx(0.8)
    # only zh is segmented: Japanese stays whitespace-tokenized
    assert token_f1("東京都", "東京", "ja", "mlqa") == 0.0


def test_mlqa_empty_and_multiple_golds():
    assert token_f1("...", "...", "sw", "mlqa") == 0.0
    assert exact_match("...", "«»", "sw", "mlqa") == 1.0
    assert exact_match("Mji wa Dodoma.", ["Arusha", "mji wa dodoma"], "sw", "mlqa") == 1.0
    # pred {mji, mkuu, dodoma} vs gold {dodoma}: P 1/3, R 1 -> 0.5
    assert token_f1("mji mkuu Dodoma", ["Arusha", "Dodoma"], "sw", "mlqa") == pytest.approx(0.5)


# -- unicode (flare_cli's own) --------------------------------------------------------------------
def test_unicode_scheme_nfkc_casefold_and_character_tokens():
    assert normalize_answer("Ｎａｉｒｏｂｉ", "sw", "unicode") == "nairobi"
    assert normalize_answer("STRASSE", "de", "unicode") == normalize_answer("Straße", "de", "unicode")
    assert normalize_answer("mji wa a", "sw", "unicode") == "mji wa a"
    # punctuation becomes spaces, so U.S.A. differs from USA (and its "a" then reads as an article)
    assert normalize_answer("U.S.A.", "en", "unicode") == "u s"
    # 7 of the gold's 13 Thai characters: P 1, R 7/13 -> F1 0.7
    assert token_f1("กรุงเทพ", "กรุงเทพมหานคร", "th", "unicode") == pytest.approx(0.7)
    assert token_f1("", "", "sw", "unicode") == 1.0


def test_qa_scores_average_in_percent_and_name_the_scheme():
    preds = ["USA", "Paris France", None]
    golds = [["U.S.A.", "United States"], ["Paris", "the city of Paris"], "x"]
    scores = qa_scores(preds, golds, "en", "squad")
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert scores["qa_metric"] == "squad"
    assert (scores["n"], scores["n_unparseable"]) == (3, 1)
    with pytest.raises(ConfigError, match="unknown QA metric 'bleu'"):
        qa_scores(preds, golds, "en", "bleu")


def test_default_qa_metric():
    assert default_qa_metric("qa", "sw") == "squad"  # TyDiQA-GoldP is scored with SQuAD v1.1
    assert default_qa_metric("custom", "en") == "squad"
    assert default_qa_metric("custom", "eng_Latn") == "squad"
    assert default_qa_metric("custom", "sw") == "mlqa"


# -- MT -------------------------------------------------------------------------------------------
def test_mt_scores_are_sacrebleu_corpus_scores():
    import sacrebleu

    hyps = ["Der Hund bellt.", "Es regnet\theute."]
    refs = ["Der Hund bellt laut.", "Es regnet heute."]
    scores = mt_scores(hyps, refs, target_lang="de")
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert scores["chrf++"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["signatures"]["chrf++"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:2")
    assert scores["n"] == 2
    assert mt_scores(["a"], ["a"], target_lang="zh")["signatures"]["bleu"].count("tok:zh") == 1
    with pytest.raises(ValueError, match="1 translations for 2 references"):
        mt_scores(["a"], ["a", "b"])


def test_accuracy_counts_unparseable_as_wrong():
    assert accuracy(["positive", None, "negative", "neutral"], ["positive", "neutral", "negative", "positive"]) == 50.0


def test_macro_f1_hand_computed():
    labels = ("negative", "neutral", "positive")
    golds = ["negative", "negative", "neutral", "positive", "positive", "positive"]
    preds = ["negative", "positive", None, "positive", "positive", "neutral"]
    # negative: tp1 fp0 fn1 -> 2/3; neutral: tp0 -> 0; positive: tp2 fp1 fn1 -> 4/6
    expected = 100 * (2 / 3 + 0 + 2 / 3) / 3
    assert macro_f1(preds, golds, labels) == pytest.approx(expected)
    scores = classification_scores(preds, golds, labels)
    assert scores["accuracy"] == pytest.approx(100 * 3 / 6)
    assert scores["macro_f1"] == pytest.approx(expected)
    assert scores["n_unparseable"] == 1


def test_macro_f1_counts_classes_never_seen():
    # Only "positive" occurs and is always right; the two absent classes still weigh 1/3 each.
    assert macro_f1(["positive"] * 3, ["positive"] * 3, ("negative", "neutral", "positive")) == pytest.approx(100 / 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions for 1 gold"):
        accuracy(["a", "b"], ["a"])
