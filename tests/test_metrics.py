"""Metric values computed by hand, including non-English normalization."""

import pytest

from flare_cli.metrics import (
    accuracy,
    answer_tokens,
    classification_scores,
    exact_match,
    macro_f1,
    normalize_answer,
    qa_scores,
    token_f1,
)


def test_normalize_strips_unicode_punctuation_and_casefolds():
    assert normalize_answer("«Dar es Salaam»!") == "dar es salaam"
    assert normalize_answer("¿Dónde   está?", lang="es") == "dónde está"
    assert normalize_answer("東京、大阪。", lang="ja") == "東京 大阪"
    assert normalize_answer("STRASSE", lang="de") == normalize_answer("Straße", lang="de")  # casefold


def test_normalize_nfkc_folds_compatibility_forms():
    assert normalize_answer("Ｎａｉｒｏｂｉ", lang="sw") == "nairobi"  # full-width letters
    assert normalize_answer("ﬁle", lang="en") == "file"  # ligature


def test_articles_removed_only_for_english():
    assert normalize_answer("The cat", lang="en") == "cat"
    # "a" is a Swahili word (possessive particle): keep it.
    assert normalize_answer("mji wa a", lang="sw") == "mji wa a"
    assert exact_match("the Nile", "Nile", lang="en") == 1.0
    assert exact_match("the Nile", "Nile", lang="sw") == 0.0


def test_swahili_exact_match_and_f1():
    assert exact_match("Mji wa Dodoma.", "mji wa dodoma", lang="sw") == 1.0
    # pred {mji, mkuu, dodoma} vs gold {dodoma}: P = 1/3, R = 1 -> F1 = 0.5
    assert token_f1("mji mkuu Dodoma", "Dodoma", lang="sw") == pytest.approx(0.5)
    # pred {rais, wa, kenya} vs gold {rais, wa, tanzania}: P = R = 2/3 -> F1 = 2/3
    assert token_f1("Rais wa Kenya", "rais wa Tanzania", lang="sw") == pytest.approx(2 / 3)


def test_thai_like_unspaced_text_gets_character_tokens():
    assert answer_tokens("กรุงเทพ", lang="th") == list("กรุงเทพ")
    # 7 gold characters, 4 predicted, all 4 shared: P = 1, R = 4/7 -> F1 = 8/11
    assert token_f1("กรุง", "กรุงเทพ", lang="th") == pytest.approx(8 / 11)
    # Mixed scripts: Latin runs stay words, CJK becomes characters.
    assert answer_tokens("iPhone 手机", lang="zh") == ["iphone", "手", "机"]


def test_empty_and_unparseable_predictions():
    assert token_f1("", "", lang="sw") == 1.0
    assert token_f1("...", "jibu", lang="sw") == 0.0  # punctuation only normalizes to empty
    assert exact_match(None, "jibu") == 0.0
    assert token_f1(None, "jibu") == 0.0


def test_qa_scores_average_in_percent_and_count_unparseable():
    scores = qa_scores(["Dodoma", "mji mkuu Dodoma", None, "x"], ["dodoma", "Dodoma", "Arusha", "y"], lang="sw")
    assert scores["exact_match"] == pytest.approx(25.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.5 + 0 + 0) / 4)
    assert scores["n"] == 4
    assert scores["n_unparseable"] == 1


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
