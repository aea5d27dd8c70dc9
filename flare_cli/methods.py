"""The methods `flare train` and `flare eval` know, one frozen record each.

Everything that depends on the method asks its record (``method_of(name).reads_pivot``) instead of
comparing the name with a list, so adding a method is one line here.

- ``adapter``: what training produces: ``none`` (the base alone), ``lora`` (a plain peft LoRA) or
  ``flare`` (LoRA whose bottleneck fuses a pivot; flare_cli/flare).
- ``prompt``: which prompt the model reads: ``target`` (the target-language fields), ``pivot`` (the
  English ``pivot_*`` fields) or ``fused`` (both in one sequence, input-level fusion).
- ``side_input``: what the model gets beside the prompt: ``none``, ``pivot`` (the English prompt's
  ids, read by a no-grad pass of the same base) or ``mt`` (the target prompt in MT-encoder ids).
"""

from __future__ import annotations

from dataclasses import dataclass

from flare_cli.errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    adapter: str  # none | lora | flare
    prompt: str  # target | pivot | fused
    side_input: str  # none | pivot | mt
    encoder_bases: bool  # available for encoder (XLM-R) bases
    card: str  # the model card's one-phrase description ("{fusion}" filled in)

    @property
    def trains(self) -> bool:
        """Whether `flare train --method` makes an adapter of it."""
        return self.adapter != "none"

    @property
    def needs_adapter(self) -> bool:
        """Whether `flare eval` needs --adapter (else it runs the base plus its task adapter)."""
        return self.adapter != "none"

    @property
    def fuses(self) -> bool:
        """Whether the adapter is a FLARE adapter (fusion in the bottleneck, flare_config.json's math)."""
        return self.adapter == "flare"

    @property
    def mergeable(self) -> bool:
        """Whether `flare merge` can fold the adapter into the base (a fused adapter needs its pivot)."""
        return self.adapter == "lora"

    @property
    def reads_pivot(self) -> bool:
        """Whether its rows need the English ``pivot_*`` columns."""
        return self.prompt in ("pivot", "fused") or self.side_input == "pivot"

    @property
    def reads_mt(self) -> bool:
        return self.side_input == "mt"

    @property
    def prompt_length_factor(self) -> int:
        """How many ``max_length`` budgets the prompt gets (input fusion holds two texts)."""
        return 2 if self.prompt == "fused" else 1


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("zero-shot", "none", "target", "none", True, "the base model alone"),
        Method("translate-test", "none", "pivot", "none", True, "the base model on machine-translated English input"),
        Method("lora", "lora", "target", "none", True, "a LoRA adapter"),
        Method("input-fusion", "lora", "fused", "none", True,
               "a LoRA adapter trained with input-level fusion (English and target text in one prompt)"),
        Method("flare", "flare", "target", "pivot", True,
               "a FLARE adapter (LoRA whose bottleneck fuses the English pivot, fusion `{fusion}`)"),
        Method("flare-mt", "flare", "target", "mt", False,
               "a FLARE-MT adapter (fuses the MT encoder's pivot states, fusion `{fusion}`)"),
    )
}
TRAIN_METHODS = tuple(name for name, m in METHODS.items() if m.trains)
ENCODER_METHODS = tuple(name for name, m in METHODS.items() if m.encoder_bases)
DEFAULT_METHOD = "lora"  # what an adapter without flare_config.json was trained with
BASE_METHOD = "zero-shot"  # what `flare eval` runs without --adapter


def method_of(name: str, *, choices=None) -> Method:
    """The record of ``name``; a ConfigError listing ``choices`` (default: every method) otherwise."""
    choices = tuple(choices or METHODS)
    if name not in choices:
        raise ConfigError(f"unknown method {name!r} (choose from {', '.join(choices)})")
    return METHODS[name]
