"""The encoder family (XLM-R, RoBERTa, BERT): detection, task heads and their LoRA settings.

FLARE on an encoder is the same layer and pivot machinery as on a decoder (method.md, "Encoders
(XLM-R), as the authors' code runs them"): LoRA on ``query`` and ``value`` of every self-attention
block, both fused. XLM-R is post-LN, so the fused input ``u`` is the block's input hidden state as
it is, and the pivot state ``h`` is the English residual stream entering the same block
(``hidden_states[i]`` of the adapters-disabled no-grad pass). Both streams are right-padded and
begin with ``<s>``, so pivots are aligned from the start by default. The task head
(``classifier`` / ``qa_outputs``) trains in full as peft ``modules_to_save``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from flare_cli.errors import ConfigError

# HF model types that are bidirectional encoders with the BERT block layout (query/key/value Linear).
ENCODER_MODEL_TYPES = ("xlm-roberta", "xlm-roberta-xl", "roberta", "bert")
ENCODER_TARGETS = ("query", "value")
DECODER_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class Head:
    """One encoder task head: the transformers auto class, the peft task type, the head module
    trained in full, and the Hub pipeline tag of a model with this head."""

    name: str
    auto_class: str
    peft_task_type: str
    module: str
    pipeline_tag: str


HEADS = {
    "sequence-classification": Head(
        "sequence-classification", "AutoModelForSequenceClassification", "SEQ_CLS", "classifier", "text-classification"
    ),
    "question-answering": Head(
        "question-answering", "AutoModelForQuestionAnswering", "QUESTION_ANS", "qa_outputs", "question-answering"
    ),
}


def is_encoder(config: Any) -> bool:
    """Whether a transformers config describes a bidirectional encoder this project supports."""
    if config is None:
        return False
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return False
    return getattr(config, "model_type", None) in ENCODER_MODEL_TYPES


def model_family(config: Any) -> str:
    """'encoder' (XLM-R, RoBERTa, BERT) or 'decoder' (causal LMs: Llama, Gemma, Qwen2, Mistral, Phi-3)."""
    return "encoder" if is_encoder(config) else "decoder"


def family_defaults(family: str) -> dict[str, Any]:
    """LoRA targets, fused modules and pivot alignment each family uses when the user names none."""
    if family == "encoder":
        # the authors align encoder streams from the start: both are right-padded and open with <s>
        return {"target_modules": ",".join(ENCODER_TARGETS), "fused_modules": ",".join(ENCODER_TARGETS),
                "align": "start"}
    # decoders: LoRA on every linear layer (the paper's choice), fusion on q and v
    return {"target_modules": "all-linear", "fused_modules": ",".join(DECODER_TARGETS), "align": "end"}


def head_for_task(task) -> Head:
    """The head an encoder needs for ``task``: span prediction for QA, classification for label tasks."""
    if getattr(task, "name", None) == "qa":
        return HEADS["question-answering"]
    if getattr(task, "labels", None):
        return HEADS["sequence-classification"]
    raise ConfigError(
        f"task {getattr(task, 'name', task)!r} has no label set and is not extractive QA: an encoder base needs "
        "a classification task (--labels) or --task qa"
    )


def head_of(model) -> Optional[Head]:
    """The head of a loaded encoder model, from its class name (None for anything else)."""
    cls = type(model).__name__
    if cls.endswith("ForSequenceClassification"):
        return HEADS["sequence-classification"]
    if cls.endswith("ForQuestionAnswering"):
        return HEADS["question-answering"]
    return None


def label_maps(labels) -> dict[str, Any]:
    """num_labels, id2label and label2id for a classification head, in the task's label order."""
    labels = list(labels)
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}


def _check_label_order(name_or_path: str, config, labels) -> None:
    """A checkpoint fine-tuned for classification names its labels: they must be the task's, in the
    task's order, or every prediction would be read as the wrong label."""
    names = [str(v) for _, v in sorted((getattr(config, "id2label", None) or {}).items(), key=lambda kv: int(kv[0]))]
    if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return  # no trained head: it gets the task's labels
    if [n.casefold() for n in names] != [str(label).casefold() for label in labels]:
        raise ConfigError(
            f"{name_or_path} has a classification head with labels {names}, but the task's labels are "
            f"{list(labels)} (in this order); use a base without that head or a task with the same labels"
        )


def load_encoder(name_or_path: str, head: Head, labels=None, **kwargs):
    """``AutoModelFor<head>.from_pretrained``; a classification head gets the task's labels.

    ``model.flare_head_is_new`` tells whether the head was missing from the checkpoint (a freshly
    initialised head: only training, or a stage-1 adapter, makes it meaningful)."""
    import transformers

    auto = getattr(transformers, head.auto_class)
    if head.name == "sequence-classification":
        _check_label_order(name_or_path, transformers.AutoConfig.from_pretrained(name_or_path), labels or ())
        kwargs.update(label_maps(labels or ()))
    model, info = auto.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    missing = info.get("missing_keys") or ()
    model.flare_head_is_new = any(str(k).split(".")[0] == head.module for k in missing)
    return model


def adapt_lora_config(lora_config, model):
    """An encoder's LoRA config: the peft task type of its head and the head as ``modules_to_save``."""
    head = head_of(model) if is_encoder(getattr(model, "config", None)) else None
    if head is None:
        return lora_config
    lora_config.task_type = head.peft_task_type
    # peft's SEQ_CLS / QUESTION_ANS models add their head (classifier, score / qa_outputs) to
    # modules_to_save themselves; naming it here too would list it twice in adapter_config.json
    lora_config.modules_to_save = None
    return lora_config


def encoder_body(model):
    """The bare encoder under a task head (``model.roberta`` for XLM-R): the pivot pass needs no head."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, model) if prefix else model


def encoder_meta(model, task, max_length: int) -> dict[str, Any]:
    """Provenance an encoder adapter needs to be loaded, merged and evaluated as trained: its head,
    the label order of a classification head, and the window length (QA windows, truncation)."""
    head = head_of(model)
    meta: dict[str, Any] = {"head": head.name if head else None, "max_length": max_length}
    if head is not None and head.name == "sequence-classification":
        meta["labels"] = list(task.labels)
    return meta
