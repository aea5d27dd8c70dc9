import pytest

from flare_cli import languages
from flare_cli.errors import LanguageError
from flare_cli.languages import Language, register, resolve


@pytest.mark.parametrize("code", ["sw", "swa", "swh", "sw-KE", "sw_KE", "swh_Latn", "SWH_LATN", "Sw", " swh_latn ", "Swahili"])
def test_swahili_spellings_resolve_to_one_language(code):
    assert resolve(code) == Language(iso1="sw", iso3="swh", flores="swh_Latn", name="Swahili")


@pytest.mark.parametrize(
    "code, flores",
    [
        ("en", "eng_Latn"), ("eng", "eng_Latn"), ("en-US", "eng_Latn"), ("ar", "arb_Arab"), ("ara", "arb_Arab"),
        ("ar-EG", "arz_Arab"), ("fa", "pes_Arab"), ("fa-AF", "prs_Arab"), ("zh", "zho_Hans"), ("zh-Hant", "zho_Hant"),
        ("zh-TW", "zho_Hant"), ("ks-Deva", "kas_Deva"), ("kas", "kas_Arab"), ("ger", "deu_Latn"), ("ms", "zsm_Latn"),
        ("nb", "nob_Latn"), ("no", "nob_Latn"), ("lv", "lvs_Latn"), ("qu", "quy_Latn"), ("yue", "yue_Hant"),
    ],
)
def test_common_codes(code, flores):
    assert resolve(code).flores == flores


def test_table_is_exactly_nllb_200():
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    assert set(languages.NLLB_LANGUAGES) == set(FAIRSEQ_LANGUAGE_CODES)
    assert len(languages.NLLB_LANGUAGES) == 202


def test_every_flores_code_and_iso1_round_trips():
    iso1_seen = {}
    for flores, (name, iso1) in languages.NLLB_LANGUAGES.items():
        assert resolve(flores).flores == flores
        assert resolve(flores.lower()).flores == flores
        assert resolve(flores).name == name
        if iso1:
            assert iso1 not in iso1_seen, f"{iso1} used by {iso1_seen.get(iso1)} and {flores}"
            iso1_seen[iso1] = flores
            assert resolve(iso1).flores == flores
    for alias, flores in languages.CODE_ALIASES.items():
        assert flores in languages.NLLB_LANGUAGES, alias


def test_unknown_code_suggests_closest():
    with pytest.raises(LanguageError) as err:
        resolve("swx")
    assert str(err.value) == "unknown language code 'swx'; did you mean swh_Latn (Swahili), swe_Latn (Swedish)?"
    assert err.value.exit_code == 2


def test_unsupported_script_lists_supported_ones():
    with pytest.raises(LanguageError, match=r"^NLLB has no Latn script for 'kas'; supported: kas_Arab, kas_Deva$"):
        resolve("kas_Latn")


@pytest.mark.parametrize("code", ["", "   ", "zz", "1234"])
def test_garbage_is_a_language_error(code):
    with pytest.raises(LanguageError):
        resolve(code)


def test_register_local_use_language(monkeypatch):
    monkeypatch.setattr(languages, "_REGISTERED", {})
    with pytest.raises(LanguageError):
        resolve("qtw")
    lang = register("qtw", "qtw_Latn", "Toywegian")
    assert resolve("qtw") == lang == resolve("qtw_latn") == resolve("QTW")
    assert lang.iso1 is None and lang.script == "Latn"
    with pytest.raises(LanguageError, match="cannot register"):
        register("qtw", "xyz_Latn", "Broken")
