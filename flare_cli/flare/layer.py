"""The FLARE LoRA layer, on stock peft (no fork).

For a fused projection with frozen weight W, LoRA factors A (r x d_in) and B (d_out x r),
scaling s = alpha / r, target input u and aligned pivot state h for the same layer:

    y = W u + s * B( phi( A h, A u ) )

``FlareLinear`` is peft's ``lora.Linear`` registered through ``LoraConfig._register_custom_module``
for ``nn.Linear`` targets. Modules that FLARE fuses resolve to ``FlareVariant`` (a peft
``LoraVariant``); every other target stays plain LoRA. The variant reads the pivot states from the
``PivotSession`` that ``FlareModel`` attaches before each forward. Merging a fused module raises:
its output depends on the pivot (method.md, "Merging").
"""

from __future__ import annotations

import re
from typing import Any, Optional

import torch
from peft.tuners.lora import layer as lora_layer
from torch import nn

from flare_cli.errors import MergeError, PivotError
from flare_cli.flare.fusion import FUSION_PARAMS, get_fusion, phi_absent

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_index_of(module_name: str) -> Optional[int]:
    """Decoder layer index from a module path such as 'model.layers.3.self_attn.q_proj'."""
    found = _LAYER_INDEX.findall(module_name)
    return int(found[-1]) if found else None


class FlareVariant(lora_layer.LoraVariant):
    """peft LoraVariant computing result + s * B(phi(A h, A u))."""

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: "FlareLinear", adapter_name: str, config=None, **kwargs) -> None:
        fusion = config._flare_settings.fusion
        module.flare_fusion[adapter_name] = fusion
        factory = FUSION_PARAMS.get(fusion)
        weight = module.lora_A[adapter_name].weight
        packed = getattr(config._flare_settings, "_packed", None)
        if packed is not None:
            module.flare_rows[adapter_name] = packed.segments()  # Phi-3 qkv_proj: fuse only q and v rows
        if factory is not None:
            module.lora_flare_xattn[adapter_name] = factory(module.r[adapter_name]).to(weight.device, weight.dtype)
        settings = config._flare_settings
        if settings.owns_mt_projection(module.flare_name):
            # FLARE-MT: the trainable map d_mt -> d_model from MT encoder states to pivot states ``h``.
            # No bias, so absent (zero) positions stay zero. Saved with the LoRA weights.
            proj = nn.Linear(settings.mt_hidden_size, module.in_features, bias=False)
            module.lora_flare_mtproj[adapter_name] = proj.to(weight.device, weight.dtype)

    @staticmethod
    def _refuse(module: "FlareLinear", active_adapter: str) -> None:
        raise MergeError(
            f"cannot merge FLARE adapter {active_adapter!r} into {module.flare_name}: its output depends on the "
            f"pivot (fusion {module.flare_fusion[active_adapter]!r}); keep the standalone adapter, or merge "
            "explicitly without the pivot path (flare merge --drop-pivot)"
        )

    @staticmethod
    def merge_safe(module, active_adapter, orig_weight):
        if module.flare_fusion[active_adapter] != "none":
            FlareVariant._refuse(module, active_adapter)
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module, active_adapter, orig_weight):
        if module.flare_fusion[active_adapter] != "none":
            FlareVariant._refuse(module, active_adapter)
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module, active_adapter, orig_weight):
        return orig_weight - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module: "FlareLinear", active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any):
        lora_A = module.lora_A[active_adapter]
        lora_B = module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        fusion = module.flare_fusion[active_adapter]

        h = present = None
        if fusion != "none":
            session = module.flare_session
            if session is None:
                raise PivotError(
                    f"FLARE layer {module.flare_name} ran without pivot states: call the FlareModel with "
                    "pivot_input_ids (or with no_pivot=True to run it pivot-less on purpose)"
                )
            h, present = session.lookup(module.flare_layer, x)
        rows = module.flare_rows.get(active_adapter)
        if h is None and fusion == "mul" and rows is None:
            return result  # every position absent and phi(0, T) = 0: no update, not even A u
        T = lora_A(dropout(x))  # (B, L, r)
        if h is None:  # no pivot here (no_pivot, or a generated token): every position absent, S = 0
            phi = phi_absent(fusion, T)
        else:
            S = lora_A(dropout(h.to(x.dtype)))  # (B, L, r); zero at absent positions since A has no bias
            params = module.lora_flare_xattn[active_adapter] if active_adapter in module.lora_flare_xattn else None
            phi = get_fusion(fusion)(S, T, present, params)
        if rows is None:
            return result + lora_B(phi) * module.scaling[active_adapter]
        # a packed q/k/v projection: B phi on the fused rows, B T on plain-LoRA rows, nothing elsewhere
        weight = lora_B.weight
        pieces = []
        for start, end, mode in rows:
            source = phi if mode == "fused" else T if mode == "plain" else None
            if source is None:
                pieces.append(result.new_zeros(*result.shape[:-1], end - start))
            else:
                pieces.append(nn.functional.linear(source, weight[start:end]))
        return result + torch.cat(pieces, dim=-1) * module.scaling[active_adapter]


class FlareLinear(lora_layer.Linear):
    """peft lora.Linear that resolves to FlareVariant on the modules FLARE fuses."""

    adapter_layer_names = lora_layer.Linear.adapter_layer_names + ("lora_flare_xattn", "lora_flare_mtproj")

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config, **kwargs) -> None:
        if not hasattr(self, "lora_flare_xattn"):
            self.lora_flare_xattn = nn.ModuleDict()
            self.lora_flare_mtproj = nn.ModuleDict()  # FLARE-MT projection, on its owner modules only
            self.flare_fusion: dict[str, str] = {}
            self.flare_rows: dict[str, list] = {}  # packed q/k/v projection: (first row, end row, mode)
            self.flare_session = None  # PivotSession, attached by FlareModel per forward
        self.flare_name = kwargs.get("target_name", "")
        self.flare_layer = layer_index_of(self.flare_name)
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config, **kwargs):
        settings = getattr(config, "_flare_settings", None)
        if settings is not None and settings.fuses(self.flare_name):
            return FlareVariant()
        return super().resolve_lora_variant(config=config, **kwargs)

    @property
    def is_fused(self) -> bool:
        return any(isinstance(v, FlareVariant) for v in self.lora_variant.values())

    def __repr__(self) -> str:
        return "flare." + super().__repr__()
