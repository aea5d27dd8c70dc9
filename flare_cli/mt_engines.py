"""MT engines behind `flare translate`: one small interface, two implementations.

- ``transformers``: ``AutoModelForSeq2SeqLM.generate`` (the reference; every NLLB/M2M100 checkpoint).
- ``ctranslate2``: the same model converted once with CTranslate2's own converter
  (``ctranslate2.converters.TransformersConverter``) and run by ``ctranslate2.Translator``. At
  float32 on CPU it gives the transformers engine's translations several times faster; int8 is
  faster still but changes some outputs. An optional extra: ``pip install 'flare-cli[ct2]'``.

An engine exposes what the translate pipeline needs and nothing else:
``translate_batch(texts, src, tgt, num_beams, max_new_tokens) -> (translations, generated tokens)``,
``count_tokens``, ``lang_code``, and the settings that decide its outputs (``engine``, ``model_id``,
``identity()``, ``device``, ``compute_type``), which go into the cache key and the ``.meta.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Protocol

from flare_cli.config import flare_home
from flare_cli.errors import ConfigError, ModelError, first_line
from flare_cli.languages import Language, resolve

ENGINES = ("transformers", "ctranslate2")
# Precisions per engine; "auto" picks float32 on CPU (identical outputs) and a half type on GPU.
HF_COMPUTE_TYPES = ("float32", "float16", "bfloat16")
CT2_COMPUTE_TYPES = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16")
CT2_MISSING = "the ctranslate2 engine is not installed: pip install 'flare-cli[ct2]' (or: pip install ctranslate2)"


class MTEngine(Protocol):
    engine: str  # "transformers" | "ctranslate2"
    model_id: str
    device: str  # resolved device kind: cpu | cuda | mps
    compute_type: str  # resolved precision: float32, float16, int8, ...

    def identity(self) -> str: ...
    def lang_code(self, lang: Language) -> str: ...
    def count_tokens(self, texts: list[str]) -> list[int]: ...
    def translate_batch(
        self, texts: list[str], src: Language, tgt: Language, num_beams: int, max_new_tokens: int
    ) -> tuple[list[str], int]: ...


def load_engine(name: str, model_id: str, revision: str | None = None, device: str = "auto",
                compute_type: str = "auto", device_map: str | None = None) -> MTEngine:
    """The engine `name` for `model_id`; ConfigError (exit 2) for an unknown or uninstalled engine."""
    check_engine_options(name, compute_type, device_map)
    if name == "ctranslate2":
        return CT2Translator(model_id, revision, device, compute_type)
    return HFTranslator(model_id, revision, device, device_map, compute_type)


def check_engine_options(name: str, compute_type: str = "auto", device_map: str | None = None,
                         device: str = "auto") -> None:
    """Fail on a bad engine/precision/device combination before any data is read or model loaded."""
    if name not in ENGINES:
        raise ConfigError(f"unknown --engine {name!r}; use transformers or ctranslate2")
    allowed = HF_COMPUTE_TYPES if name == "transformers" else CT2_COMPUTE_TYPES
    if compute_type != "auto" and compute_type not in allowed:
        hint = " (int8 needs --engine ctranslate2)" if compute_type.startswith("int") and name == "transformers" else ""
        raise ConfigError(f"--compute-type {compute_type!r} is not one of auto, {', '.join(allowed)} for {name}{hint}")
    if name == "ctranslate2":
        if device_map:
            raise ConfigError("--device-map is for the transformers engine; ctranslate2 runs the model on one device")
        _check_ct2_device(device)
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            raise ConfigError(CT2_MISSING) from None


def ct2_available() -> bool:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


def model_revision(model_id: str, revision: str | None) -> str:
    """A stable revision string: the Hub commit when cached, else a fingerprint of a local folder."""
    local = Path(model_id)
    if local.is_dir():
        stats = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in local.iterdir() if p.is_file()
        )
        return "local:" + hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    return revision or "main"


def is_ct2_model(path: str | Path) -> bool:
    """A folder written by a CTranslate2 converter (model.bin plus CTranslate2's own config.json)."""
    folder = Path(path)
    if not (folder / "model.bin").is_file():
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return True  # older converters wrote no config.json
    return "model_type" not in config and "architectures" not in config


def mt_lang_code(tokenizer, lang, model_id: str = "MT model") -> str:
    """The MT tokenizer's code for ``lang`` (a code or a ``languages.Language``): FLORES for NLLB
    (``swh_Latn``), ISO 639-1 for M2M100 (``sw``)."""
    language = resolve(lang) if isinstance(lang, str) else lang
    unk = tokenizer.unk_token_id
    if tokenizer.convert_tokens_to_ids(language.flores) not in (None, unk):
        return language.flores
    if hasattr(tokenizer, "get_lang_id") and language.iso1 and language.iso1 in getattr(tokenizer, "lang_code_to_id", {}):
        return language.iso1
    raise ModelError(f"MT model {model_id!r} has no language token for {language.flores} ({language.name})")




def _load_tokenizer(model_id: str, revision: str | None, hint: str = ""):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load the MT tokenizer {model_id!r}: {first_line(err)}{hint}") from None


class _TokenizerMixin:
    """Language codes and token counts, shared: both engines tokenize with the model's HF tokenizer."""

    tokenizer = None
    model_id = ""

    def lang_code(self, lang: Language) -> str:
        """The tokenizer's code for `lang`: FLORES for NLLB, ISO 639-1 for M2M100."""
        return mt_lang_code(self.tokenizer, lang, self.model_id)

    def _lang_token_id(self, code: str) -> int:
        tok = self.tokenizer
        return tok.get_lang_id(code) if hasattr(tok, "get_lang_id") else tok.convert_tokens_to_ids(code)

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]


# ------------------------------------------------------------------------------ transformers


class HFTranslator(_TokenizerMixin):
    """NLLB / M2M100 through AutoModelForSeq2SeqLM.generate; the model loads on first use."""

    engine = "transformers"

    def __init__(self, model_id: str, revision: str | None = None, device: str = "auto",
                 device_map: str | None = None, compute_type: str = "auto"):
        if is_ct2_model(model_id):
            raise ConfigError(f"{model_id} is a CTranslate2 model folder: use --engine ctranslate2")
        self.model_id = model_id
        self.revision = revision
        self.device_map = device_map
        self._model = None
        self.tokenizer = _load_tokenizer(model_id, revision)
        self._device_name = _resolve_torch_device(device)
        self.device = "cuda" if device_map else self._device_name.split(":")[0]
        if compute_type == "auto":  # bf16 on a GPU (halves memory), float32 on CPU
            compute_type = "float32" if self.device == "cpu" else "bfloat16"
        self.compute_type = compute_type

    def identity(self) -> str:
        """Model id + resolved revision for cache keys and provenance."""
        return model_revision(self.model_id, self.revision)

    @property
    def model(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForSeq2SeqLM

            kwargs = {"revision": self.revision, "dtype": getattr(torch, self.compute_type)}
            if self.device_map:
                kwargs["device_map"] = self.device_map
            try:
                model = AutoModelForSeq2SeqLM.from_pretrained(self.model_id, **kwargs)
            except (OSError, ValueError) as err:
                raise ModelError(f"cannot load the MT model {self.model_id!r}: {first_line(err)}") from None
            if not self.device_map:
                model = model.to(self._device_name)
            self._model = model.eval()
        return self._model

    def translate_batch(
        self, texts: list[str], src: Language, tgt: Language, num_beams: int, max_new_tokens: int
    ) -> tuple[list[str], int]:
        """Translate one batch; returns the translations and the number of generated tokens."""
        import torch

        model = self.model
        self.tokenizer.src_lang = self.lang_code(src)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                forced_bos_token_id=self._lang_token_id(self.lang_code(tgt)),
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                # Beam search ends once num_beams hypotheses are finished: fairseq's rule, NLLB's own
                # decoder and CTranslate2's, so both engines give the same beams. (generate's default
                # heuristic searches on and can pick a different, rarely better, hypothesis.)
                **({"early_stopping": True} if num_beams > 1 else {}),  # greedy: generate warns on it
            )
        pad = self.tokenizer.pad_token_id
        generated = int((out[:, 1:] != pad).sum())
        return self.tokenizer.batch_decode(out, skip_special_tokens=True), generated


def _resolve_torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------- ctranslate2


class CT2Translator(_TokenizerMixin):
    """The model converted by CTranslate2's converter (cached under FLARE_HOME) and run by ctranslate2.

    Decoding mirrors ``generate``: the source is the HF tokenizer's tokens (language code .. </s>),
    the target prefix is the target language code (generate's forced BOS), ``max_decoding_length``
    counts the prefix as ``max_new_tokens`` counts the forced BOS, and the length/repetition
    settings come from the model's generation_config, as generate would take them.
    """

    engine = "ctranslate2"

    def __init__(self, model_id: str, revision: str | None = None, device: str = "auto",
                 compute_type: str = "auto", threads: int | None = None):
        try:
            import ctranslate2
        except ImportError:
            raise ConfigError(CT2_MISSING) from None
        self.model_id = model_id
        self.revision = revision
        self._ct2 = ctranslate2
        self.prebuilt = is_ct2_model(model_id)
        hint = (" (a CTranslate2 folder needs the tokenizer files beside model.bin: convert with --copy_files, "
                "or give the original model)") if self.prebuilt else ""
        self.tokenizer = _load_tokenizer(model_id, None if self.prebuilt else revision, hint)
        self.device, self.device_index = _resolve_ct2_device(device, ctranslate2)
        if compute_type == "auto":  # float32 on CPU gives transformers' outputs; half precision on GPU
            compute_type = "float32" if self.device == "cpu" else "float16"
        supported = ctranslate2.get_supported_compute_types(self.device)
        if compute_type not in supported:
            raise ConfigError(f"--compute-type {compute_type} is not supported by ctranslate2 on {self.device} "
                              f"(supported: {', '.join(sorted(supported))})")
        self.compute_type = compute_type
        # As many threads as torch uses when it is loaded (the demo sets it), else OMP_NUM_THREADS,
        # else ctranslate2's default (0); torch is not imported for this alone (seconds at start-up).
        if threads is None:
            torch = sys.modules.get("torch")
            threads = torch.get_num_threads() if torch else int(os.environ.get("OMP_NUM_THREADS") or 0)
        self.threads = threads
        self._translator = None
        self._decoding = _generation_defaults(model_id, None if self.prebuilt else revision)

    def identity(self) -> str:
        return model_revision(self.model_id, self.revision)

    @property
    def model_dir(self) -> Path:
        """The converted model: the folder given, or the cached conversion (converting on first use)."""
        if self.prebuilt:
            return Path(self.model_id)
        return converted_model(self.model_id, self.revision, self.identity(), self.tokenizer)

    @property
    def translator(self):
        if self._translator is None:
            try:
                self._translator = self._ct2.Translator(
                    str(self.model_dir), device=self.device, device_index=self.device_index,
                    compute_type=self.compute_type, intra_threads=self.threads,
                )
            except (RuntimeError, ValueError) as err:
                raise ModelError(f"ctranslate2 cannot load {self.model_id!r}: {first_line(err)}") from None
        return self._translator

    def translate_batch(
        self, texts: list[str], src: Language, tgt: Language, num_beams: int, max_new_tokens: int
    ) -> tuple[list[str], int]:
        tok = self.tokenizer
        tok.src_lang = self.lang_code(src)
        source = [tok.convert_ids_to_tokens(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
        prefix = tok.convert_ids_to_tokens(self._lang_token_id(self.lang_code(tgt)))
        results = self.translator.translate_batch(
            source,
            target_prefix=[[prefix]] * len(texts),
            beam_size=num_beams,
            max_decoding_length=max_new_tokens,
            min_decoding_length=0,  # generate's min_length is 0: an immediate </s> is allowed
            return_end_token=True,  # counted as generate counts it
            return_scores=False,
            **self._decoding,
        )
        hyps = [r.hypotheses[0] for r in results]
        outputs = [tok.decode(tok.convert_tokens_to_ids(h), skip_special_tokens=True) for h in hyps]
        return outputs, sum(len(h) for h in hyps)


def _check_ct2_device(device: str) -> tuple[str, str]:
    """(kind, index) of a --device ctranslate2 can run on ("auto" passes); else one ConfigError line."""
    kind, _, index = device.partition(":")
    if device != "auto" and (kind not in ("cpu", "cuda") or (index and not index.isdigit())):
        raise ConfigError(f"--device {device!r}: ctranslate2 runs on cpu or cuda[:N]; use --engine transformers for {kind}")
    return kind, index


def _resolve_ct2_device(device: str, ctranslate2) -> tuple[str, int]:
    if device == "auto":
        return ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"), 0
    kind, index = _check_ct2_device(device)
    if kind == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise ConfigError("--device cuda: ctranslate2 sees no CUDA device (is this its CUDA build?)")
    return kind, int(index or 0)


def _generation_defaults(model_id: str, revision: str | None) -> dict:
    """The model's generation_config settings that change beam search, in ctranslate2's names."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError):
        return {}
    return {
        "length_penalty": float(gen.length_penalty if gen.length_penalty is not None else 1.0),
        "repetition_penalty": float(gen.repetition_penalty if gen.repetition_penalty is not None else 1.0),
        "no_repeat_ngram_size": int(gen.no_repeat_ngram_size or 0),
    }


def converted_model(model_id: str, revision: str | None, identity: str, tokenizer=None) -> Path:
    """The CTranslate2 conversion of `model_id` at `identity`, converted once and cached.

    Cached under ``$FLARE_HOME/ct2/<model>--<revision>``; the conversion writes into a temporary
    folder renamed into place, so a killed conversion leaves nothing half-written behind. The
    tokenizer is saved beside it, so the folder also works as ``--mt-model`` on its own.
    """
    if Path(model_id).is_dir():  # a local folder: its name plus a hash of where it is
        name = Path(model_id).resolve().name + "-" + hashlib.sha256(str(Path(model_id).resolve()).encode()).hexdigest()[:8]
    else:
        name = model_id.replace("/", "--")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}--{identity}")
    target = flare_home() / "ct2" / slug
    if (target / "model.bin").is_file():
        return target
    import ctranslate2

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{slug}.converting-"))
    try:
        converter = ctranslate2.converters.TransformersConverter(
            model_id, revision=None if Path(model_id).is_dir() else revision, low_cpu_mem_usage=True,
        )
        converter.convert(str(tmp), force=True)  # weights keep the checkpoint's dtype; precision is chosen at load
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _copy_generation_config(model_id, revision, tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same conversion first
            if not (target / "model.bin").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, (ConfigError, ModelError)):
            raise
        raise ModelError(f"ctranslate2 could not convert {model_id!r}: {first_line(err)}") from None
    return target


def _copy_generation_config(model_id: str, revision: str | None, out: Path) -> None:
    from transformers import GenerationConfig

    try:
        GenerationConfig.from_pretrained(model_id, revision=None if Path(model_id).is_dir() else revision).save_pretrained(out)
    except (OSError, ValueError):
        pass  # no generation_config: ctranslate2's defaults are generate's defaults
