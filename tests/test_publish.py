"""What `flare push` publishes is the trained model: push to a local Hub, download into an empty
cache with the real huggingface_hub client, load the way a downstream user does (plain peft for
LoRA, load_flare_model for FLARE / FLARE-MT), and match the trained model's logits; the card is a
valid Hub card that tells the truth (base, language, licence, data, split)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from fixtures_mt import build_tiny_nllb
from hub_server import FakeHub, hermetic_hub_env
from tiny_models import save_base
from typer.testing import CliRunner

from flare_cli.cli import app

runner = CliRunner()
TOKEN = "hf_PublishCanary0123456789abcdef"
BASE_ID = "alice/tiny-llama"  # the Hub id the local base stands for
NAMES = ["Amina", "Baraka", "Chidi", "Dalia", "Erasto", "Fumo"]
CITIES = ["Dodoma", "Arusha", "Mwanza", "Tanga", "Moshi", "Kigoma"]
NLLB = "facebook/nllb-200-distilled-600M"
INIT_STD = 0.1  # logits of order 1-10: float32 rounding of a merge stays well below 1e-5


def write_rows(path: Path, n: int, seed: int, english: bool = False) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            name, city = rng.choice(NAMES), rng.choice(CITIES)
            en = {"context": f"{name} lives in {city}.", "question": f"Where does {name} live?"}
            row = {"id": f"r{i}", "answer": city}
            if english:
                row.update(en)
            else:
                row.update(context=f"{name} anaishi {city}.", question=f"{name} anaishi wapi?",
                           pivot_context=en["context"], pivot_question=en["question"])
            handle.write(json.dumps(row) + "\n")
    return path


def train(world: Path, out: Path, method: str, lang: str, data: Path, *extra: str) -> Path:
    args = ["train", "--base", str(world / "base"), "-o", str(out), "--task", "qa", "--lang", lang,
            "--method", method, "--data", str(data), "--lr", "5e-2", "--batch-size", "4",
            "--micro-batch-size", "4", "--max-steps", "4", "--r", "4", "--logging-steps", "2", "--seed", "3", *extra]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    save_base(root / "base", init_std=INIT_STD)
    nllb = build_tiny_nllb(root / "nllb")
    english = write_rows(root / "train.en.jsonl", 16, seed=0, english=True)
    target = write_rows(root / "train.sw.jsonl", 16, seed=1)
    write_rows(root / "test.sw.jsonl", 4, seed=2)
    # the sidecar `flare translate` writes: the card must name the MT model and inherit its licence
    (root / "train.sw.jsonl.meta.json").write_text(json.dumps(
        {"mt_model": NLLB, "revision": "f8d333a098d19b4fd9a8b18f94170487ad3f821d", "src_lang": "eng_Latn",
         "tgt_lang": "swh_Latn", "direction": "train"}))
    stage1 = train(root, root / "stage1", "lora", "en", english)
    adapters = {
        "lora": train(root, root / "lora", "lora", "sw", target, "--task-adapter", str(stage1)),
        "flare": train(root, root / "flare", "flare", "sw", target, "--task-adapter", str(stage1)),
        "flare-mt": train(root, root / "flare-mt", "flare-mt", "sw", target, "--task-adapter", str(stage1),
                          "--mt-model", str(nllb)),
    }
    return {"root": root, "base": root / "base", "stage1": stage1, **adapters}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub(token=TOKEN, lifetime_s=300) as server:
        hermetic_hub_env(monkeypatch, server.endpoint, tmp_path / "hf")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def push(folder, repo, *extra):
    res = runner.invoke(app, ["push", "--folder", str(folder), "--repo-id", repo, "--base-model", BASE_ID,
                              "--json", *extra], env={"COLUMNS": "500"})
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def inputs(world, method, fm=None):
    from flare_cli.modeling import load_tokenizer

    tok = load_tokenizer(str(world["base"]))
    ids = tok(["Context: Amina anaishi Dodoma.\nQuestion: Amina anaishi wapi?\nAnswer:"],
              return_tensors="pt")["input_ids"]
    kwargs = {}
    if method == "flare":
        kwargs["pivot_input_ids"] = tok(["Context: Amina lives in Dodoma.\nQuestion: Where does Amina live?\nAnswer:"],
                                        return_tensors="pt")["input_ids"]
    if method == "flare-mt":
        rows = fm.mt_encoder.encode_texts(["Amina anaishi Dodoma. Amina anaishi wapi?"], "sw", 64)
        kwargs["mt_input_ids"], kwargs["mt_attention_mask"] = fm.mt_encoder.pad(rows)
    return ids, kwargs


def trained_logits(world, method):
    """The model training built: base + stage 1 merged, then the stage-3 adapter (local folders)."""
    from flare_cli.flare import load_flare_model
    from flare_cli.modeling import load_base_model

    model, _ = load_base_model(str(world["base"]), task_adapter=str(world["stage1"]), dtype="fp32", device="cpu")
    fm = load_flare_model(model, world[method]).eval()
    ids, kwargs = inputs(world, method, fm)
    with torch.no_grad():
        return fm(ids, **kwargs).logits, (ids, kwargs)


def fresh_base(world):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(world["base"], dtype=torch.float32).eval()


def empty_cache() -> Path:
    import huggingface_hub.constants as constants

    cache = Path(constants.HF_HUB_CACHE)
    assert not cache.exists() or not any(cache.iterdir())
    return cache


def test_lora_on_stage1_is_one_plain_peft_adapter(world, hub, tmp_path):
    from huggingface_hub import snapshot_download
    from peft import PeftModel

    out = push(world["lora"], "alice/qa-sw-lora")
    assert out["task_adapter"] == "folded" and "task_adapter/adapter_config.json" not in out["files"]
    want, (ids, _) = trained_logits(world, "lora")

    cache = empty_cache()
    folder = Path(snapshot_download("alice/qa-sw-lora"))  # the real client, as a downstream user
    assert cache in folder.parents
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == BASE_ID
    model = PeftModel.from_pretrained(fresh_base(world), str(folder)).eval()
    with torch.no_grad():
        got = model(ids).logits
    assert (got - want).abs().max().item() < 1e-5

    # negative control: the stage-3 files alone (what used to be pushed) are another model
    bare = PeftModel.from_pretrained(fresh_base(world), str(world["lora"])).eval()
    with torch.no_grad():
        assert (bare(ids).logits - want).abs().max().item() > 1e-3

    # `flare merge --adapter user/repo` gives the trained model as well
    res = runner.invoke(app, ["merge", "--adapter", "alice/qa-sw-lora", "--base", str(world["base"]),
                              "-o", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (merged(ids).logits - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("method", ["flare", "flare-mt"])
def test_flare_repo_carries_its_stage1_and_load_flare_model_restores_both(world, hub, method):
    from flare_cli.flare import load_flare_model

    repo = f"alice/qa-sw-{method}"
    out = push(world[method], repo)
    assert out["task_adapter"] == "bundled"
    assert {"task_adapter/adapter_config.json", "task_adapter/adapter_model.safetensors"} <= set(out["files"])
    flare_config = json.loads(hub.files(repo)["flare_config.json"])
    assert flare_config["meta"]["bundled_task_adapter"] == "task_adapter"
    assert flare_config["meta"]["base_model"] == BASE_ID
    assert str(world["root"]) not in json.dumps(flare_config)  # no local paths published
    if method == "flare-mt":
        assert any("is a local folder" in w for w in out["warnings"])  # the tiny MT encoder is local
    want, (ids, kwargs) = trained_logits(world, method)

    empty_cache()
    encoder = None
    if method == "flare-mt":  # the tiny MT encoder is a local folder: published by name, loaded from here
        from flare_cli.flare import load_mt_encoder

        assert flare_config["mt_model"] == "tiny-nllb"
        encoder = load_mt_encoder(str(world["root"] / "nllb" / "tiny-nllb"))
    fm = load_flare_model(fresh_base(world), repo, mt_encoder=encoder).eval()  # a Hub id: downloaded, stage 1 merged
    with torch.no_grad():
        got = fm(ids, **kwargs).logits
    assert (got - want).abs().max().item() < 1e-5

    without_stage1 = load_flare_model(fresh_base(world), repo, merge_task_adapter=False, mt_encoder=encoder).eval()
    with torch.no_grad():
        assert (without_stage1(ids, **kwargs).logits - want).abs().max().item() > 1e-3

    # a downloaded repo pushes again as it is: its bundled stage 1 travels along unchanged
    from huggingface_hub import snapshot_download

    again = push(Path(snapshot_download(repo)), repo + "-copy")
    assert again["task_adapter"] == "bundled"
    assert hub.files(repo + "-copy") == hub.files(repo)


def test_eval_takes_a_hub_id_and_scores_what_the_local_folder_scores(world, hub, tmp_path):
    push(world["flare"], "alice/qa-sw-flare")
    common = ["--data", str(world["root"] / "test.sw.jsonl"), "--base", str(world["base"]), "--json"]
    local = runner.invoke(app, ["eval", "--adapter", str(world["flare"]), "-o", str(tmp_path / "local"), *common])
    remote = runner.invoke(app, ["eval", "--adapter", "alice/qa-sw-flare@main", "-o", str(tmp_path / "hub"),
                                 *common])
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    assert (tmp_path / "hub" / "predictions.jsonl").read_text() == (tmp_path / "local" / "predictions.jsonl").read_text()
    assert json.loads((tmp_path / "hub" / "metrics.json").read_text())["adapter"] == "alice/qa-sw-flare@main"


def test_offline_with_nothing_cached_is_one_line(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest's, stated again: the point of this test
    for argv in (["eval", "--adapter", "alice/nothing-here", "--data", str(world["root"] / "test.sw.jsonl")],
                 ["merge", "--adapter", "alice/nothing-here", "-o", str(tmp_path / "m")],
                 ["eval", "--adapter", str(world["flare"]), "--task-adapter", "alice/nothing-here",
                  "--data", str(world["root"] / "test.sw.jsonl")]):
        res = runner.invoke(app, argv, env={"COLUMNS": "500"})
        assert res.exit_code == 1, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "alice/nothing-here is no local folder and not in the Hugging Face cache, " \
            "and HF_HUB_OFFLINE is set: download it first (`hf download alice/nothing-here`)" in lines[0], lines


def test_card_is_a_valid_hub_card_that_tells_the_truth(world, hub, tmp_path):
    from huggingface_hub import ModelCard, snapshot_download
    from huggingface_hub.repocard import eval_results_to_model_index, metadata_eval_result, model_index_to_eval_results

    import shutil

    folder = tmp_path / "flare"
    shutil.copytree(world["flare"], folder)
    metrics = {"exact_match": 41.0, "f1": 55.5, "metric": "exact_match", "value": 41.0, "n": 4, "n_unparseable": 0,
               "task": "qa", "lang": "sw", "method": "flare", "adapter": str(folder),
               "settings": {"base": str(world["base"]), "data": "google-research-datasets/tydiqa",
                            "split": "validation"}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    push(folder, "alice/qa-sw-flare")
    card = ModelCard.load(Path(snapshot_download("alice/qa-sw-flare")) / "README.md")
    card.validate()  # the client's validation, answered by the local Hub with the Hub's metadata rules
    with pytest.raises(ValueError, match="swh_Latn"):  # which do reject what the old card wrote
        ModelCard(str(card).replace("- sw\n", "- swh_Latn\n", 1)).validate()
    data = card.data.to_dict()
    assert data["base_model"] == BASE_ID and data["base_model_relation"] == "adapter"
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-generation"
    assert data["language"] == ["sw"]  # ISO 639-1, not swh_Latn or sw-KE
    assert data["license"] == "cc-by-nc-4.0"  # the NLLB-200 translations of the training data
    assert "datasets" not in data  # local training files are no Hub datasets
    assert NLLB in card.text and "train.sw.jsonl" in card.text
    assert str(world["root"]) not in str(card)  # no local path anywhere in the card

    name, results = model_index_to_eval_results(data["model-index"])
    assert [(r.metric_type, r.metric_value, r.dataset_split, r.dataset_type) for r in results] == [
        ("exact_match", 41.0, "validation", "google-research-datasets/tydiqa"),
        ("f1", 55.5, "validation", "google-research-datasets/tydiqa")]
    assert eval_results_to_model_index(name, results) == data["model-index"]  # round trip
    first = metadata_eval_result(
        model_pretty_name=name, task_pretty_name=None, task_id="question-answering", metrics_pretty_name=None,
        metrics_id="exact_match", metrics_value=41.0, dataset_pretty_name=results[0].dataset_name,
        dataset_id="google-research-datasets/tydiqa", dataset_config="sw", dataset_split="validation")
    want, got = first["model-index"][0]["results"][0], data["model-index"][0]["results"][0]
    assert want["task"] == got["task"] and want["dataset"] == got["dataset"]
    assert {k: v for k, v in want["metrics"][0].items() if k != "verified"} == got["metrics"][0]

    # the card's commands are the ones this test just ran
    assert "flare eval --adapter alice/qa-sw-flare --task qa --lang sw" in card.text
    assert f'load_flare_model(base, "alice/qa-sw-flare")' in card.text
    assert f'AutoModelForCausalLM.from_pretrained("{BASE_ID}")' in card.text


def test_license_override_warns(world, hub, tmp_path):
    res = runner.invoke(app, ["push", "--folder", str(world["lora"]), "--repo-id", "alice/x", "--base-model", BASE_ID,
                              "--license", "apache-2.0", "--dry-run"], env={"COLUMNS": "500"})
    assert res.exit_code == 0, res.output
    assert "license: apache-2.0" in res.stdout
    assert "warning: --license apache-2.0 overrides the derived licence cc-by-nc-4.0" in res.stderr
    assert NLLB in res.stderr


@pytest.mark.parametrize("method", ["lora", pytest.param("flare", marks=pytest.mark.slow)])  # flare: ~50 s
def test_card_python_snippet_run_as_written_gives_the_trained_model(world, hub, method):
    """The base is on the (local) Hub too, so the card's snippet runs verbatim: downloads, loads."""
    import re

    from huggingface_hub import snapshot_download

    push(world["base"], BASE_ID)  # a plain transformers folder: pushed as a model repo
    repo = f"alice/qa-sw-{method}"
    push(world[method], repo)
    card = (Path(snapshot_download(repo)) / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    scope: dict = {}
    exec(compile(snippet, "model-card", "exec"), scope)  # noqa: S102 - the card's own example
    want, (ids, kwargs) = trained_logits(world, method)
    with torch.no_grad():
        got = scope["model"].eval()(ids, **kwargs).logits
    assert (got - want).abs().max().item() < 1e-5


def test_folded_lora_equals_peft_own_cat_combination(world, tmp_path):
    """peft's add_weighted_adapter(combination_type="cat") is the library's own way to join two
    LoRAs into one of summed rank: the folded adapter must be the same model."""
    from peft import PeftModel

    from flare_cli.publish import fold_loras

    folded = tmp_path / "folded"
    config = fold_loras(world["stage1"], world["lora"], folded / "adapter_model.safetensors")
    (folded / "adapter_config.json").write_text(json.dumps(config))
    ours = PeftModel.from_pretrained(fresh_base(world), str(folded)).eval()

    ref = PeftModel.from_pretrained(fresh_base(world), str(world["stage1"]), adapter_name="stage1")
    ref.load_adapter(str(world["lora"]), adapter_name="stage3")
    ref.add_weighted_adapter(["stage1", "stage3"], [1.0, 1.0], "cat", combination_type="cat")
    ref.set_adapter("cat")
    ids, _ = inputs(world, "lora")
    with torch.no_grad():
        assert (ours(ids).logits - ref.eval()(ids).logits).abs().max().item() < 1e-5


def test_fold_handles_disjoint_modules_ranks_rslora_and_alpha_pattern(tmp_path):
    """Modules in only one adapter keep their own LoRA; per-module alpha and rsLoRA scalings fold exactly."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from tiny_export import make_base
    from transformers import AutoModelForCausalLM

    from flare_cli.publish import fold_loras

    base = make_base(tmp_path / "base")

    def lora(folder, seed, **kw):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        get_peft_model(model, LoraConfig(init_lora_weights=False, **kw)).save_pretrained(folder)
        return folder

    stage1 = lora(tmp_path / "s1", 1, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    stage3 = lora(tmp_path / "s3", 2, r=3, lora_alpha=5, target_modules=["q_proj", "k_proj", "o_proj"],
                  use_rslora=True, alpha_pattern={"k_proj": 11}, rank_pattern={"o_proj": 5})
    folded = tmp_path / "folded"
    config = fold_loras(stage1, stage3, folded / "adapter_model.safetensors")
    (folded / "adapter_config.json").write_text(json.dumps(config))
    assert config["r"] == 5 and config["lora_alpha"] == 5 and not config["use_rslora"]
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]

    ids = torch.tensor([[1, 5, 9, 14, 22, 30, 41, 2]])
    with_stage1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(stage1)).merge_and_unload()
    want = PeftModel.from_pretrained(with_stage1, str(stage3)).eval()
    got = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(folded)).eval()
    with torch.no_grad():
        w, g = want(ids).logits, got(ids).logits
    assert (w - g).abs().max().item() < 1e-5
    assert (w - AutoModelForCausalLM.from_pretrained(base)(ids).logits).abs().max().item() > 1e-3


def test_task_adapter_as_a_hub_id_in_load_base_model(world, hub):
    """`flare train/eval --task-adapter user/repo`: load_base_model resolves the Hub id like a folder."""
    from flare_cli.modeling import load_base_model

    res = runner.invoke(app, ["push", "--folder", str(world["stage1"]), "--repo-id", "alice/qa-en", "--json"])
    assert res.exit_code == 0, res.output
    local, _ = load_base_model(str(world["base"]), task_adapter=str(world["stage1"]), dtype="fp32", device="cpu")
    remote, _ = load_base_model(str(world["base"]), task_adapter="alice/qa-en", dtype="fp32", device="cpu")
    ids, _ = inputs(world, "lora")
    with torch.no_grad():
        assert torch.equal(local(ids).logits, remote(ids).logits)
