"""The ctranslate2 engine: float32 translations identical to transformers' generate, cache keys per
engine and precision, kill/resume, a converted folder given directly, and clean errors."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures_mt import CORPUS, build_tiny_nllb
from flare_cli import mt_engines
from flare_cli import translate as tr
from flare_cli.cli import app
from flare_cli.errors import ConfigError, ModelError
from flare_cli.languages import resolve
from flare_cli.translate import TranslateConfig

pytest.importorskip("ctranslate2")

REPO = Path(__file__).resolve().parents[1]

# Short and long, with and without punctuation: greedy runs to max_new_tokens on some, stops early on others.
TEXTS = CORPUS + [
    "Rain fell.", "Paris", "The cat sat on the mat. Where is the river that flows to the sea?",
    "A dog runs", "Fishermen sell their catch every morning before the sun rises over the harbour.",
    "She read.", "Where?", "The children sat in the park and the rain fell on the village.",
]


@pytest.fixture(scope="module")
def tiny_mt(tmp_path_factory):
    return build_tiny_nllb(tmp_path_factory.mktemp("mt"))


@pytest.fixture(scope="module")
def stopping_mt(tiny_mt, tmp_path_factory):
    """The tiny model with a strong </s>: translations end at many different lengths (the plain one
    mostly runs to max_new_tokens), so stopping and </s> counting are exercised too."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mt)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_mt)
    with torch.no_grad():
        model.get_input_embeddings().weight[tok.eos_token_id] *= 12
    out = tmp_path_factory.mktemp("mt-stop") / "tiny-nllb-stop"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    return tmp_path_factory.mktemp("flare_home")


@pytest.fixture
def flare_home(shared_home, monkeypatch):
    """One FLARE_HOME for the module (over conftest's per-test one), so the model is converted once."""
    monkeypatch.setenv("FLARE_HOME", str(shared_home))
    return shared_home


def generate_reference(model_dir, texts, num_beams, max_new_tokens, src="eng_Latn", tgt="swh_Latn"):
    """Plain transformers, no flare_cli code: tokenizer + AutoModelForSeq2SeqLM.generate."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, src_lang=src)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    out = []
    for text in texts:  # one at a time: no padding in the reference
        with torch.inference_mode():
            ids = model.generate(**tok([text], return_tensors="pt"), forced_bos_token_id=tok.convert_tokens_to_ids(tgt),
                                 num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                                 early_stopping=True)  # NLLB/fairseq's beam stopping rule (docs/translate.md)
        out.append(tok.decode(ids[0], skip_special_tokens=True))
    return out


def write_rows(path, texts):
    path.write_text("".join(json.dumps({"id": str(i), "text": t, "label": "neutral"}) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def cfg_for(tiny_mt, tmp_path, out="out.jsonl", **kw):
    base = dict(input=str(tmp_path / "in.jsonl"), output=str(tmp_path / out), lang="sw", task="sentiment",
                mt_model=str(tiny_mt), num_beams=1, max_new_tokens=12, batch_tokens=64)
    base.update(kw)
    return TranslateConfig(**base)


@pytest.mark.parametrize("model", ["tiny_mt", "stopping_mt"])
@pytest.mark.parametrize("num_beams,max_new_tokens", [(1, 12), (4, 12), (1, 3), (3, 20)])
def test_float32_translations_identical_to_transformers_generate(model, flare_home, tmp_path, num_beams,
                                                                 max_new_tokens, request):
    tiny_mt = request.getfixturevalue(model)
    write_rows(tmp_path / "in.jsonl", TEXTS)
    ct2 = tr.run(cfg_for(tiny_mt, tmp_path, "ct2.jsonl", engine="ctranslate2",
                         num_beams=num_beams, max_new_tokens=max_new_tokens))
    hf = tr.run(cfg_for(tiny_mt, tmp_path, "hf.jsonl", num_beams=num_beams, max_new_tokens=max_new_tokens))
    expected = generate_reference(tiny_mt, TEXTS, num_beams, max_new_tokens)
    got = [r["text"] for r in read_jsonl(ct2.output)]
    assert got == expected
    assert [r["text"] for r in read_jsonl(hf.output)] == expected
    assert len(set(expected)) >= (len(TEXTS) // 2 if max_new_tokens > 3 else 3)  # outputs depend on the input
    assert ct2.generated_tokens == hf.generated_tokens  # tokens counted alike (language code and </s> included)
    if model == "stopping_mt" and max_new_tokens > 3:  # some translations stopped early, on </s>
        assert hf.generated_tokens < len(TEXTS) * max_new_tokens
    meta = json.loads(Path(ct2.meta_path).read_text())
    assert (meta["engine"], meta["compute_type"], meta["device"]) == ("ctranslate2", "float32", "cpu")


def test_model_is_converted_once_by_ctranslate2_and_cached(tiny_mt, flare_home):
    engine = mt_engines.CT2Translator(str(tiny_mt))
    folder = engine.model_dir
    assert folder.parent == flare_home / "ct2" and folder.name.startswith("tiny-nllb-")
    assert mt_engines.is_ct2_model(folder) and (folder / "tokenizer_config.json").is_file()
    stamp = (folder / "model.bin").stat().st_mtime_ns
    again = mt_engines.CT2Translator(str(tiny_mt)).model_dir
    assert again == folder and (folder / "model.bin").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_converted_folder_given_directly_works(tiny_mt, flare_home, tmp_path):
    import ctranslate2

    # Converted by ctranslate2's own converter, as a user would (ct2-transformers-converter --copy_files ...).
    converted = tmp_path / "nllb-ct2"
    ctranslate2.converters.TransformersConverter(
        str(tiny_mt), copy_files=["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    ).convert(str(converted))
    write_rows(tmp_path / "in.jsonl", TEXTS[:6])
    result = tr.run(cfg_for(tiny_mt, tmp_path, "direct.jsonl", engine="ctranslate2", mt_model=str(converted)))
    assert [r["text"] for r in read_jsonl(result.output)] == generate_reference(tiny_mt, TEXTS[:6], 1, 12)
    assert json.loads(Path(result.meta_path).read_text())["mt_model"] == str(converted)
    assert not any(p.name.startswith("nllb-ct2") for p in (flare_home / "ct2").iterdir())  # not converted again

    with pytest.raises(ConfigError, match=r"is a CTranslate2 model folder: use --engine ctranslate2$"):
        tr.run(cfg_for(tiny_mt, tmp_path, "hf.jsonl", mt_model=str(converted)))
    bare = tmp_path / "bare-ct2"
    ctranslate2.converters.TransformersConverter(str(tiny_mt)).convert(str(bare))
    with pytest.raises(ModelError, match=r"needs the tokenizer files beside model\.bin"):
        tr.run(cfg_for(tiny_mt, tmp_path, "bare.jsonl", engine="ctranslate2", mt_model=str(bare)))


def test_cache_never_serves_one_engine_or_precision_as_another(tiny_mt, flare_home, tmp_path):
    write_rows(tmp_path / "in.jsonl", TEXTS[:8])
    runs = [("transformers", "auto"), ("ctranslate2", "float32"), ("ctranslate2", "int8"), ("ctranslate2", "auto")]
    results = [tr.run(cfg_for(tiny_mt, tmp_path, f"o{i}.jsonl", engine=e, compute_type=c))
               for i, (e, c) in enumerate(runs)]
    assert [(r.translated, r.cache_hits) for r in results] == [(8, 0), (8, 0), (8, 0), (0, 8)]
    db = tmp_path / ".flare_cache" / "translations.sqlite"
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM translations").fetchone()[0] == 24
    metas = [json.loads(Path(r.meta_path).read_text()) for r in results]
    assert [(m["engine"], m["compute_type"]) for m in metas] == [
        ("transformers", "float32"), ("ctranslate2", "float32"), ("ctranslate2", "int8"), ("ctranslate2", "float32")]


def test_kill_and_resume_with_ctranslate2_gives_transformers_output(tiny_mt, flare_home, tmp_path):
    texts = [f"{s} {TEXTS[(i + 5) % len(TEXTS)]}" for i, s in enumerate(TEXTS)]
    data = write_rows(tmp_path / "in.jsonl", texts)
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLARE_HOME": str(flare_home)}

    def flare(out, engine, extra_env=None):
        cmd = [sys.executable, "-m", "flare_cli", "translate", "-i", str(data), "-o", str(out), "-l", "sw",
               "-t", "sentiment", "--mt-model", str(tiny_mt), "--num-beams", "2", "--max-new-tokens", "12",
               "--batch-tokens", "60", "--engine", engine, "--quiet", "--json"]
        return subprocess.run(cmd, cwd=REPO, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=300)

    killed = flare(tmp_path / "a" / "out.jsonl", "ctranslate2", {tr.KILL_AFTER_BATCHES_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "a" / "out.jsonl").exists()
    cached = sqlite3.connect(tmp_path / "a" / ".flare_cache" / "translations.sqlite").execute(
        "SELECT COUNT(*) FROM translations").fetchone()[0]
    assert 0 < cached < len(texts)

    resumed = flare(tmp_path / "a" / "out.jsonl", "ctranslate2")
    assert resumed.returncode == 0, resumed.stderr
    stats = json.loads(resumed.stdout)
    assert (stats["cache_hits"], stats["translated"]) == (cached, len(texts) - cached)

    clean = flare(tmp_path / "b" / "out.jsonl", "transformers")
    assert clean.returncode == 0, clean.stderr
    assert (tmp_path / "a" / "out.jsonl").read_bytes() == (tmp_path / "b" / "out.jsonl").read_bytes()


def test_eval_pivots_on_the_fly_with_ctranslate2(tiny_mt, flare_home, tmp_path):
    rows = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS[:5])]
    n = tr.translate_pivots(rows, ["text"], lang="sw", mt_model=str(tiny_mt), cache_dir=tmp_path,
                            mt_engine="ctranslate2", num_beams=1, max_new_tokens=12)
    assert n == 5
    expected = generate_reference(tiny_mt, TEXTS[:5], 1, 12, src="swh_Latn", tgt="eng_Latn")
    assert [r["pivot_text"] for r in rows] == expected


# ------------------------------------------------------------------------------------- errors


def test_engine_not_installed_is_one_clean_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` now raises ImportError
    write_rows(tmp_path / "in.jsonl", TEXTS[:2])
    result = CliRunner().invoke(app, ["translate", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                                      "-l", "sw", "-t", "sentiment", "--engine", "ctranslate2"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: the ctranslate2 engine is not installed: pip install 'flare-cli[ct2]' (or: pip install ctranslate2)"]
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / ".flare_cache").exists()
    from flare_cli.demo import DemoConfig

    assert DemoConfig().engine == "transformers"  # the demo falls back to transformers


def test_demo_picks_ctranslate2_when_installed():
    from flare_cli.demo import DemoConfig

    assert DemoConfig().engine == "ctranslate2"
    assert DemoConfig(mt_engine="transformers").engine == "transformers"


def test_bad_engine_options_are_config_errors(tiny_mt, tmp_path):
    write_rows(tmp_path / "in.jsonl", TEXTS[:2])
    cases = [
        (dict(engine="fast"), r"unknown --engine 'fast'; use transformers or ctranslate2$"),
        (dict(compute_type="int8"), r"'int8' is not one of auto, float32, float16, bfloat16 for transformers "
                                    r"\(int8 needs --engine ctranslate2\)$"),
        (dict(engine="ctranslate2", device_map="auto"), r"--device-map is for the transformers engine"),
        (dict(engine="ctranslate2", device="mps"), r"ctranslate2 runs on cpu or cuda\[:N\]; use --engine transformers for mps$"),
        (dict(engine="ctranslate2", compute_type="float8"), r"'float8' is not one of auto, float32"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            tr.run(cfg_for(tiny_mt, tmp_path, **options))
    assert not (tmp_path / "out.jsonl").exists()


def test_unsupported_compute_type_on_this_device(tiny_mt):
    import ctranslate2

    if "float16" in ctranslate2.get_supported_compute_types("cpu"):
        pytest.skip("this CPU build runs float16")
    with pytest.raises(ConfigError, match=r"--compute-type float16 is not supported by ctranslate2 on cpu \(supported: "):
        mt_engines.CT2Translator(str(tiny_mt), device="cpu", compute_type="float16")


def test_ct2_engine_counts_tokens_like_the_hf_engine(tiny_mt):
    hf, ct2 = mt_engines.HFTranslator(str(tiny_mt)), mt_engines.CT2Translator(str(tiny_mt))
    assert ct2.count_tokens(TEXTS) == hf.count_tokens(TEXTS)
    assert ct2.lang_code(resolve("sw")) == "swh_Latn"


def test_eval_with_a_missing_mt_engine_fails_before_loading_anything(tmp_path, monkeypatch):
    from flare_cli import evaluate

    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    monkeypatch.setattr(evaluate, "_resolve", lambda cfg: pytest.fail("resolved settings before checking the engine"))
    with pytest.raises(ConfigError, match=r"^the ctranslate2 engine is not installed: pip install 'flare-cli\[ct2\]'"):
        evaluate.run(evaluate.EvalConfig(task="qa", lang="sw", data=str(tmp_path / "none.jsonl"),
                                         mt_engine="ctranslate2", output_dir=str(tmp_path / "eval")))


def test_a_failed_conversion_leaves_nothing_behind_and_the_next_run_converts(tiny_mt, tmp_path, monkeypatch):
    import ctranslate2

    monkeypatch.setenv("FLARE_HOME", str(tmp_path / "home"))
    real_convert = ctranslate2.converters.TransformersConverter.convert

    def killed_midway(self, output_dir, *args, **kwargs):
        (Path(output_dir) / "model.bin").write_bytes(b"half")  # a partial write, then the failure
        raise RuntimeError("disk full")

    monkeypatch.setattr(ctranslate2.converters.TransformersConverter, "convert", killed_midway)
    write_rows(tmp_path / "in.jsonl", TEXTS[:3])
    with pytest.raises(ModelError, match=r"^ctranslate2 could not convert '.*tiny-nllb': disk full$"):
        tr.run(cfg_for(tiny_mt, tmp_path, engine="ctranslate2"))
    assert list((tmp_path / "home" / "ct2").iterdir()) == []
    monkeypatch.setattr(ctranslate2.converters.TransformersConverter, "convert", real_convert)
    result = tr.run(cfg_for(tiny_mt, tmp_path, engine="ctranslate2"))
    assert [r["text"] for r in read_jsonl(result.output)] == generate_reference(tiny_mt, TEXTS[:3], 1, 12)
