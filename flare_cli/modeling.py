"""Loading base models (and a stage-1 task adapter merged into them), offline-aware."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from flare_cli.errors import ConfigError, ModelError, first_line, hub_offline


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """'auto' = bf16 on a GPU that supports it, else fp32 (CPU bf16 matmuls are slow)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    return table[dtype]


def _describe_load_failure(name: str, err: Exception) -> str:
    offline = hub_offline()
    if not Path(name).exists() and ("offline" in str(err).lower() or offline or "connect" in str(err).lower()):
        return f"cannot load {name!r}: not a local folder and the Hub is unreachable (offline); download it first or pass a local path"
    if not Path(name).exists():
        return f"cannot load {name!r}: not a local folder, and not found on the Hub ({type(err).__name__})"
    return f"cannot load {name!r}: {first_line(err)}"


def adapter_base_name(adapter_dir: str) -> Optional[str]:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ModelError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)")
    return json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")


def same_base(a: Optional[str], b: Optional[str]) -> bool:
    if not a or not b:
        return True  # unknown on one side: nothing to compare
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # transformers raises OSError/ValueError/HF errors here
        raise ModelError(_describe_load_failure(name_or_path, err)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _base_config(name_or_path: str):
    """The base's transformers config (None if it cannot be read: the model load then says why)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except Exception:  # the model load below reports the failure with its own message
        return None


def load_base_model(
    name_or_path: str,
    *,
    task_adapter: Optional[str] = None,
    dtype: str = "auto",
    device_map: Optional[str] = None,
    load_in_4bit: bool = False,
    device: Optional[str] = None,
    task=None,
):
    """(model, tokenizer) for a base; a stage-1 LoRA task adapter is merged in first (method.md).

    A causal LM loads as ``AutoModelForCausalLM``. An encoder (XLM-R, RoBERTa, BERT) loads with the
    head ``task`` needs: ``AutoModelForSequenceClassification`` with the task's labels (nli,
    sentiment, custom) or ``AutoModelForQuestionAnswering`` (qa). A new head is initialised from
    torch's RNG: seed first. The task adapter must have been trained on this base: a different one
    is refused.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from flare_cli.flare.encoder import head_for_task, is_encoder, load_encoder

    device = device or pick_device()
    kwargs = {"dtype": resolve_dtype(dtype, device)}
    if device_map:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("--load-in-4bit needs bitsandbytes: pip install 'flare-cli[quant]'") from None
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    if task_adapter:
        from flare_cli.hub import resolve_adapter

        task_adapter = str(resolve_adapter(task_adapter, what="task adapter"))  # a folder or a Hub repo
        trained_on = adapter_base_name(task_adapter)
        if not same_base(trained_on, name_or_path):
            raise ConfigError(
                f"task adapter {task_adapter} was trained on {trained_on!r}, not on base {name_or_path!r}"
            )
    try:
        if is_encoder(_base_config(name_or_path)):
            if task is None:
                raise ConfigError(f"{name_or_path} is an encoder: loading it needs the task (its head)")
            model = load_encoder(name_or_path, head_for_task(task), getattr(task, "labels", None), **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except ConfigError:
        raise
    except Exception as err:
        raise ModelError(_describe_load_failure(name_or_path, err)) from None
    if not device_map and not load_in_4bit:
        model.to(device)
    if task_adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, task_adapter).merge_and_unload()
        except Exception as err:
            raise ModelError(f"cannot merge task adapter {task_adapter}: {first_line(err)}") from None
    return model, load_tokenizer(name_or_path)
