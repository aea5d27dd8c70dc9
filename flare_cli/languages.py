"""Language codes: ISO 639-1 / ISO 639-3 / BCP-47 / FLORES-200, resolved to the codes NLLB-200 uses.

Users say ``sw``, ``swa``, ``sw-KE`` or ``swh_Latn``; every stage works with one `Language`. The table
lists every NLLB-200 language (its FLORES-200 code, English name and ISO 639-1 code where one
exists). Macrolanguage and bibliographic codes map to the variety NLLB was trained on (``swa`` ->
``swh_Latn``, ``ara`` -> ``arb_Arab``, ``fas`` -> ``pes_Arab``...).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from flare_cli.errors import LanguageError


@dataclass(frozen=True)
class Language:
    iso1: str | None  # ISO 639-1 ("sw"), None when the language has none
    iso3: str  # ISO 639-3 of the variety ("swh")
    flores: str  # FLORES-200 / NLLB code ("swh_Latn")
    name: str  # English name

    @property
    def script(self) -> str:
        return self.flores.split("_", 1)[1]


# FLORES-200 code -> (English name, ISO 639-1 or "") for every NLLB-200 language.
NLLB_LANGUAGES: dict[str, tuple[str, str]] = {
    "ace_Arab": ("Acehnese (Arabic script)", ""),
    "ace_Latn": ("Acehnese (Latin script)", ""),
    "acm_Arab": ("Mesopotamian Arabic", ""),
    "acq_Arab": ("Ta'izzi-Adeni Arabic", ""),
    "aeb_Arab": ("Tunisian Arabic", ""),
    "afr_Latn": ("Afrikaans", "af"),
    "ajp_Arab": ("South Levantine Arabic", ""),
    "aka_Latn": ("Akan", "ak"),
    "amh_Ethi": ("Amharic", "am"),
    "apc_Arab": ("North Levantine Arabic", ""),
    "arb_Arab": ("Modern Standard Arabic", "ar"),
    "ars_Arab": ("Najdi Arabic", ""),
    "ary_Arab": ("Moroccan Arabic", ""),
    "arz_Arab": ("Egyptian Arabic", ""),
    "asm_Beng": ("Assamese", "as"),
    "ast_Latn": ("Asturian", ""),
    "awa_Deva": ("Awadhi", ""),
    "ayr_Latn": ("Central Aymara", "ay"),
    "azb_Arab": ("South Azerbaijani", ""),
    "azj_Latn": ("North Azerbaijani", "az"),
    "bak_Cyrl": ("Bashkir", "ba"),
    "bam_Latn": ("Bambara", "bm"),
    "ban_Latn": ("Balinese", ""),
    "bel_Cyrl": ("Belarusian", "be"),
    "bem_Latn": ("Bemba", ""),
    "ben_Beng": ("Bengali", "bn"),
    "bho_Deva": ("Bhojpuri", ""),
    "bjn_Arab": ("Banjar (Arabic script)", ""),
    "bjn_Latn": ("Banjar (Latin script)", ""),
    "bod_Tibt": ("Standard Tibetan", "bo"),
    "bos_Latn": ("Bosnian", "bs"),
    "bug_Latn": ("Buginese", ""),
    "bul_Cyrl": ("Bulgarian", "bg"),
    "cat_Latn": ("Catalan", "ca"),
    "ceb_Latn": ("Cebuano", ""),
    "ces_Latn": ("Czech", "cs"),
    "cjk_Latn": ("Chokwe", ""),
    "ckb_Arab": ("Central Kurdish", ""),
    "crh_Latn": ("Crimean Tatar", ""),
    "cym_Latn": ("Welsh", "cy"),
    "dan_Latn": ("Danish", "da"),
    "deu_Latn": ("German", "de"),
    "dik_Latn": ("Southwestern Dinka", ""),
    "dyu_Latn": ("Dyula", ""),
    "dzo_Tibt": ("Dzongkha", "dz"),
    "ell_Grek": ("Greek", "el"),
    "eng_Latn": ("English", "en"),
    "epo_Latn": ("Esperanto", "eo"),
    "est_Latn": ("Estonian", "et"),
    "eus_Latn": ("Basque", "eu"),
    "ewe_Latn": ("Ewe", "ee"),
    "fao_Latn": ("Faroese", "fo"),
    "pes_Arab": ("Western Persian", "fa"),
    "fij_Latn": ("Fijian", "fj"),
    "fin_Latn": ("Finnish", "fi"),
    "fon_Latn": ("Fon", ""),
    "fra_Latn": ("French", "fr"),
    "fur_Latn": ("Friulian", ""),
    "fuv_Latn": ("Nigerian Fulfulde", "ff"),
    "gla_Latn": ("Scottish Gaelic", "gd"),
    "gle_Latn": ("Irish", "ga"),
    "glg_Latn": ("Galician", "gl"),
    "grn_Latn": ("Guarani", "gn"),
    "guj_Gujr": ("Gujarati", "gu"),
    "hat_Latn": ("Haitian Creole", "ht"),
    "hau_Latn": ("Hausa", "ha"),
    "heb_Hebr": ("Hebrew", "he"),
    "hin_Deva": ("Hindi", "hi"),
    "hne_Deva": ("Chhattisgarhi", ""),
    "hrv_Latn": ("Croatian", "hr"),
    "hun_Latn": ("Hungarian", "hu"),
    "hye_Armn": ("Armenian", "hy"),
    "ibo_Latn": ("Igbo", "ig"),
    "ilo_Latn": ("Ilocano", ""),
    "ind_Latn": ("Indonesian", "id"),
    "isl_Latn": ("Icelandic", "is"),
    "ita_Latn": ("Italian", "it"),
    "jav_Latn": ("Javanese", "jv"),
    "jpn_Jpan": ("Japanese", "ja"),
    "kab_Latn": ("Kabyle", ""),
    "kac_Latn": ("Jingpho", ""),
    "kam_Latn": ("Kamba", ""),
    "kan_Knda": ("Kannada", "kn"),
    "kas_Arab": ("Kashmiri (Arabic script)", "ks"),
    "kas_Deva": ("Kashmiri (Devanagari script)", ""),
    "kat_Geor": ("Georgian", "ka"),
    "knc_Arab": ("Central Kanuri (Arabic script)", "kr"),
    "knc_Latn": ("Central Kanuri (Latin script)", ""),
    "kaz_Cyrl": ("Kazakh", "kk"),
    "kbp_Latn": ("Kabiye", ""),
    "kea_Latn": ("Kabuverdianu", ""),
    "khm_Khmr": ("Khmer", "km"),
    "kik_Latn": ("Kikuyu", "ki"),
    "kin_Latn": ("Kinyarwanda", "rw"),
    "kir_Cyrl": ("Kyrgyz", "ky"),
    "kmb_Latn": ("Kimbundu", ""),
    "kon_Latn": ("Kikongo", "kg"),
    "kor_Hang": ("Korean", "ko"),
    "kmr_Latn": ("Northern Kurdish", "ku"),
    "lao_Laoo": ("Lao", "lo"),
    "lvs_Latn": ("Standard Latvian", "lv"),
    "lij_Latn": ("Ligurian", ""),
    "lim_Latn": ("Limburgish", "li"),
    "lin_Latn": ("Lingala", "ln"),
    "lit_Latn": ("Lithuanian", "lt"),
    "lmo_Latn": ("Lombard", ""),
    "ltg_Latn": ("Latgalian", ""),
    "ltz_Latn": ("Luxembourgish", "lb"),
    "lua_Latn": ("Luba-Kasai", ""),
    "lug_Latn": ("Ganda", "lg"),
    "luo_Latn": ("Luo", ""),
    "lus_Latn": ("Mizo", ""),
    "mag_Deva": ("Magahi", ""),
    "mai_Deva": ("Maithili", ""),
    "mal_Mlym": ("Malayalam", "ml"),
    "mar_Deva": ("Marathi", "mr"),
    "min_Latn": ("Minangkabau", ""),
    "mkd_Cyrl": ("Macedonian", "mk"),
    "plt_Latn": ("Plateau Malagasy", "mg"),
    "mlt_Latn": ("Maltese", "mt"),
    "mni_Beng": ("Meitei (Bengali script)", ""),
    "khk_Cyrl": ("Halh Mongolian", "mn"),
    "mos_Latn": ("Mossi", ""),
    "mri_Latn": ("Maori", "mi"),
    "zsm_Latn": ("Standard Malay", "ms"),
    "mya_Mymr": ("Burmese", "my"),
    "nld_Latn": ("Dutch", "nl"),
    "nno_Latn": ("Norwegian Nynorsk", "nn"),
    "nob_Latn": ("Norwegian Bokmal", "nb"),
    "npi_Deva": ("Nepali", "ne"),
    "nso_Latn": ("Northern Sotho", ""),
    "nus_Latn": ("Nuer", ""),
    "nya_Latn": ("Nyanja", "ny"),
    "oci_Latn": ("Occitan", "oc"),
    "gaz_Latn": ("West Central Oromo", "om"),
    "ory_Orya": ("Odia", "or"),
    "pag_Latn": ("Pangasinan", ""),
    "pan_Guru": ("Eastern Panjabi", "pa"),
    "pap_Latn": ("Papiamento", ""),
    "pol_Latn": ("Polish", "pl"),
    "por_Latn": ("Portuguese", "pt"),
    "prs_Arab": ("Dari", ""),
    "pbt_Arab": ("Southern Pashto", "ps"),
    "quy_Latn": ("Ayacucho Quechua", "qu"),
    "ron_Latn": ("Romanian", "ro"),
    "run_Latn": ("Rundi", "rn"),
    "rus_Cyrl": ("Russian", "ru"),
    "sag_Latn": ("Sango", "sg"),
    "san_Deva": ("Sanskrit", "sa"),
    "sat_Beng": ("Santali", ""),
    "scn_Latn": ("Sicilian", ""),
    "shn_Mymr": ("Shan", ""),
    "sin_Sinh": ("Sinhala", "si"),
    "slk_Latn": ("Slovak", "sk"),
    "slv_Latn": ("Slovenian", "sl"),
    "smo_Latn": ("Samoan", "sm"),
    "sna_Latn": ("Shona", "sn"),
    "snd_Arab": ("Sindhi", "sd"),
    "som_Latn": ("Somali", "so"),
    "sot_Latn": ("Southern Sotho", "st"),
    "spa_Latn": ("Spanish", "es"),
    "als_Latn": ("Tosk Albanian", "sq"),
    "srd_Latn": ("Sardinian", "sc"),
    "srp_Cyrl": ("Serbian", "sr"),
    "ssw_Latn": ("Swati", "ss"),
    "sun_Latn": ("Sundanese", "su"),
    "swe_Latn": ("Swedish", "sv"),
    "swh_Latn": ("Swahili", "sw"),
    "szl_Latn": ("Silesian", ""),
    "tam_Taml": ("Tamil", "ta"),
    "tat_Cyrl": ("Tatar", "tt"),
    "tel_Telu": ("Telugu", "te"),
    "tgk_Cyrl": ("Tajik", "tg"),
    "tgl_Latn": ("Tagalog", "tl"),
    "tha_Thai": ("Thai", "th"),
    "tir_Ethi": ("Tigrinya", "ti"),
    "taq_Latn": ("Tamasheq (Latin script)", ""),
    "taq_Tfng": ("Tamasheq (Tifinagh script)", ""),
    "tpi_Latn": ("Tok Pisin", ""),
    "tsn_Latn": ("Tswana", "tn"),
    "tso_Latn": ("Tsonga", "ts"),
    "tuk_Latn": ("Turkmen", "tk"),
    "tum_Latn": ("Tumbuka", ""),
    "tur_Latn": ("Turkish", "tr"),
    "twi_Latn": ("Twi", "tw"),
    "tzm_Tfng": ("Central Atlas Tamazight", ""),
    "uig_Arab": ("Uyghur", "ug"),
    "ukr_Cyrl": ("Ukrainian", "uk"),
    "umb_Latn": ("Umbundu", ""),
    "urd_Arab": ("Urdu", "ur"),
    "uzn_Latn": ("Northern Uzbek", "uz"),
    "vec_Latn": ("Venetian", ""),
    "vie_Latn": ("Vietnamese", "vi"),
    "war_Latn": ("Waray", ""),
    "wol_Latn": ("Wolof", "wo"),
    "xho_Latn": ("Xhosa", "xh"),
    "ydd_Hebr": ("Eastern Yiddish", "yi"),
    "yor_Latn": ("Yoruba", "yo"),
    "yue_Hant": ("Yue Chinese", ""),
    "zho_Hans": ("Chinese (Simplified)", "zh"),
    "zho_Hant": ("Chinese (Traditional)", ""),
    "zul_Latn": ("Zulu", "zu"),
}

# Macrolanguage (ISO 639-1 and -3), ISO 639-2/B and other common codes -> the FLORES code NLLB covers.
CODE_ALIASES: dict[str, str] = {
    "swa": "swh_Latn", "ara": "arb_Arab", "fas": "pes_Arab", "per": "pes_Arab", "msa": "zsm_Latn",
    "may": "zsm_Latn", "zho": "zho_Hans", "chi": "zho_Hans", "cmn": "zho_Hans", "lav": "lvs_Latn",
    "uzb": "uzn_Latn", "mon": "khk_Cyrl", "nep": "npi_Deva", "ori": "ory_Orya", "pus": "pbt_Arab",
    "que": "quy_Latn", "sqi": "als_Latn", "alb": "als_Latn", "aze": "azj_Latn", "kau": "knc_Arab",
    "kur": "kmr_Latn", "orm": "gaz_Latn", "yid": "ydd_Hebr", "mlg": "plt_Latn", "nor": "nob_Latn",
    "fil": "tgl_Latn", "aym": "ayr_Latn", "ful": "fuv_Latn", "pan": "pan_Guru", "ger": "deu_Latn",
    "fre": "fra_Latn", "dut": "nld_Latn", "gre": "ell_Grek", "cze": "ces_Latn", "slo": "slk_Latn",
    "rum": "ron_Latn", "wel": "cym_Latn", "arm": "hye_Armn", "geo": "kat_Geor", "baq": "eus_Latn",
    "ice": "isl_Latn", "mac": "mkd_Cyrl", "mao": "mri_Latn", "bur": "mya_Mymr", "tib": "bod_Tibt",
    "ekk": "est_Latn", "no": "nob_Latn",
}

# BCP-47 language-region tags whose variety has its own NLLB code.
REGION_OVERRIDES: dict[str, str] = {
    "ar-eg": "arz_Arab", "ar-ma": "ary_Arab", "ar-tn": "aeb_Arab", "ar-sa": "ars_Arab",
    "ar-iq": "acm_Arab", "ar-ye": "acq_Arab", "ar-jo": "ajp_Arab", "ar-ps": "ajp_Arab",
    "ar-sy": "apc_Arab", "ar-lb": "apc_Arab", "fa-af": "prs_Arab", "zh-tw": "zho_Hant",
    "zh-hk": "zho_Hant", "zh-mo": "zho_Hant",
}

_FLORES_RE = re.compile(r"^([a-z]{3})_([a-z]{4})$")
_BCP47_RE = re.compile(r"^([a-z]{2,3})(?:-([a-z]{4}))?(?:-([a-z]{2}|[0-9]{3}))?(?:-.*)?$")

_REGISTERED: dict[str, Language] = {
    # The embedded toy world's target language (ISO 639-3 local-use range), so `flare ... --lang qtw`
    # works in every stage of the demo without importing the toy world.
    "qtw_Latn": Language(iso1=None, iso3="qtw", flores="qtw_Latn", name="Toy world target language"),
}


def _by_flores() -> dict[str, Language]:
    table = {
        flores: Language(iso1=iso1 or None, iso3=flores.split("_")[0], flores=flores, name=name)
        for flores, (name, iso1) in NLLB_LANGUAGES.items()
    }
    table.update(_REGISTERED)
    return table


def _index() -> dict[str, str]:
    """Every accepted lower-case spelling -> FLORES code (first script wins for ISO codes)."""
    index: dict[str, str] = {}
    for lang in _by_flores().values():
        index.setdefault(lang.flores.lower(), lang.flores)
        index.setdefault(lang.iso3, lang.flores)
        if lang.iso1:
            index.setdefault(lang.iso1, lang.flores)
    for alias, flores in CODE_ALIASES.items():
        index.setdefault(alias, flores)
    return index


def register(iso3: str, flores: str, name: str, iso1: str | None = None) -> Language:
    """Add a language NLLB does not list (the toy world's local-use ``qtw`` -> ``qtw_Latn``)."""
    if not _FLORES_RE.match(flores.lower()) or flores.split("_")[0] != iso3.lower():
        raise LanguageError(f"cannot register {flores!r}: expected '<iso3>_<Script>' starting with {iso3!r}")
    lang = Language(iso1=iso1, iso3=iso3.lower(), flores=flores, name=name)
    _REGISTERED[flores] = lang
    return lang


def all_languages() -> list[Language]:
    return sorted(_by_flores().values(), key=lambda lang: lang.flores)


def resolve(code: str) -> Language:
    """``sw`` / ``swa`` / ``swh`` / ``sw-KE`` / ``swh_Latn`` (any case) -> `Language`.

    Raises LanguageError naming the closest known codes.
    """
    if not isinstance(code, str) or not code.strip():
        raise LanguageError("empty language code; use e.g. 'sw', 'swh' or 'swh_Latn'")
    raw = code.strip()
    key = raw.lower().replace("_", "-")
    table = _by_flores()
    index = _index()

    flores_match = _FLORES_RE.match(raw.lower())
    if flores_match:
        iso3, script = flores_match.groups()
        exact = f"{iso3}_{script.capitalize()}"
        if exact in table:
            return table[exact]
        if iso3 in index:
            known = sorted(c for c in table if c.startswith(iso3 + "_"))
            raise LanguageError(
                f"NLLB has no {script.capitalize()} script for {iso3!r}; supported: {', '.join(known)}"
            )
    else:
        match = _BCP47_RE.match(key)
        if match:
            lang, script, region = match.groups()
            if region and f"{lang}-{region}" in REGION_OVERRIDES:
                return table[REGION_OVERRIDES[f"{lang}-{region}"]]
            if lang in index:
                flores = index[lang]
                if script:
                    # zh-Hant, ks-Deva, ...: pick the same language in the requested script.
                    iso3 = flores.split("_")[0]
                    scripted = f"{iso3}_{script.capitalize()}"
                    if scripted in table:
                        return table[scripted]
                    if lang in ("zh", "zho") and script == "hant":
                        return table["zho_Hant"]
                    known = sorted(c for c in table if c.startswith(iso3 + "_"))
                    raise LanguageError(
                        f"NLLB has no {script.capitalize()} script for {raw!r}; supported: {', '.join(known)}"
                    )
                return table[flores]
    by_name = {lang.name.lower(): lang for lang in table.values()}
    if raw.lower() in by_name:
        return by_name[raw.lower()]
    raise LanguageError(f"unknown language code {raw!r}; {_suggest(raw, table, index)}")


def _suggest(raw: str, table: dict[str, Language], index: dict[str, str]) -> str:
    needle = raw.lower()
    names = {lang.name.lower(): lang.flores for lang in table.values()}
    hits = difflib.get_close_matches(needle, list(index), n=3, cutoff=0.6)
    hits += difflib.get_close_matches(needle, list(names), n=3, cutoff=0.6)
    seen: list[str] = []
    for hit in hits:
        flores = index.get(hit) or names[hit]
        if flores not in seen:
            seen.append(flores)
    if not seen:
        return "use an ISO 639-1/639-3 code or a FLORES-200 code such as 'swh_Latn'"
    return "did you mean " + ", ".join(f"{f} ({table[f].name})" for f in seen[:4]) + "?"
