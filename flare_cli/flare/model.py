"""Build, run, save and load a FLARE model.

    fm = get_flare_model(base_model, FlareConfig(fusion="add_relu"))
    out = fm(input_ids, attention_mask, labels=labels, prompt_mask=prompt_mask,
             pivot_input_ids=pivot_ids, pivot_attention_mask=pivot_mask)
    out.loss.backward()
    fm.save_pretrained("adapter/")          # adapter_model.safetensors + adapter_config.json + flare_config.json
    fm = load_flare_model(base_model, "adapter/")

The saved folder is an ordinary peft LoRA adapter: plain ``PeftModel.from_pretrained`` opens it and
gives the pivot-less model. ``flare_config.json`` holds every FLARE setting, because peft keeps
neither a custom-module mapping nor a LoraConfig subclass's extra fields.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from flare_cli.errors import ConfigError, ModelError, PivotError, first_line
from flare_cli.flare.encoder import adapt_lora_config
from flare_cli.flare.fusion import FUSIONS
from flare_cli.flare.layer import FlareLinear, layer_index_of
from flare_cli.flare.pivot import (
    PivotSession,
    align_index,
    capture_layer_inputs,
    find_decoder_layers,
    gather_aligned,
)
from flare_cli.methods import TRAIN_METHODS, Method, method_of

FLARE_CONFIG_NAME = "flare_config.json"
MT_PROJECTIONS = ("shared", "per-layer")
DEFAULT_TARGETS = ("q_proj", "v_proj")


@dataclass
class FlareConfig:
    """Every setting of a FLARE (or plain LoRA) adapter; saved as flare_config.json."""

    method: str = "flare"
    fusion: str = "add_relu"
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: Union[list[str], str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    fused_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    fused_layers: Optional[list[int]] = None
    align: str = "end"
    source_norm: bool = False
    # FLARE-MT: the frozen MT encoder (Hub id or local folder; revision None for a local folder), its
    # hidden size, and whether one projection d_mt -> d_model serves every fused layer or each has its own
    mt_model: Optional[str] = None
    mt_revision: Optional[str] = None
    mt_hidden_size: Optional[int] = None
    mt_projection: str = "shared"
    # provenance, not used by the math: base model, task, language, stage-1 adapter, versions
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method_of(self.method, choices=TRAIN_METHODS)
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose one of: {', '.join(FUSIONS)}")
        if self.align not in ("end", "start"):
            raise ConfigError(f"unknown align {self.align!r}; choose 'end' or 'start'")
        if self.r <= 0:
            raise ConfigError(f"r must be a positive integer, got {self.r}")
        if self.mt_projection not in MT_PROJECTIONS:
            raise ConfigError(f"unknown mt_projection {self.mt_projection!r}; choose 'shared' or 'per-layer'")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if isinstance(self.fused_modules, str):
            self.fused_modules = [m.strip() for m in self.fused_modules.split(",") if m.strip()]
        if isinstance(self.target_modules, list):
            extra = sorted(set(self.fused_modules) - set(self.target_modules))
            if extra and self.is_fused:
                raise ConfigError(f"fused modules {extra} are not LoRA targets {self.target_modules}")

    @property
    def method_record(self) -> Method:
        return method_of(self.method)

    @property
    def is_fused(self) -> bool:
        """Whether this adapter reads a pivot (FLARE, FLARE-MT) rather than being plain LoRA."""
        return self.method_record.fuses

    @property
    def reads_mt(self) -> bool:
        """FLARE-MT: the pivot is the MT encoder's states of the target prompt."""
        return self.method_record.reads_mt

    @property
    def fused_module_names(self) -> list[str]:
        """The module names that fuse in the model at hand: ``fused_modules``, or for a fused
        q/k/v projection (Phi-3) that projection (``resolve_modules`` fills it in)."""
        packed = getattr(self, "_packed", None)
        return [packed.name] if packed is not None else list(self.fused_modules)

    def fuses(self, module_name: str) -> bool:
        if not self.is_fused:
            return False
        if module_name.rsplit(".", 1)[-1] not in self.fused_module_names:
            return False
        layer = layer_index_of(module_name)
        return layer is not None and (self.fused_layers is None or layer in self.fused_layers)

    def owns_mt_projection(self, module_name: str) -> bool:
        """FLARE-MT: whether this fused module holds a projection (``lora_flare_mtproj``).

        The owner is the first fused module name (``fused_modules[0]``) of the lowest fused layer
        (shared projection), or of every fused layer (``mt_projection="per-layer"``).
        """
        if not self.reads_mt or not self.fuses(module_name):
            return False
        if module_name.rsplit(".", 1)[-1] != self.fused_module_names[0]:
            return False
        if self.mt_hidden_size is None:
            raise ConfigError("flare-mt needs mt_hidden_size (the MT encoder's d_model); pass mt_encoder=")
        if self.mt_projection == "per-layer":
            return True
        return layer_index_of(module_name) == min(self.fused_layers or [0])

    def to_lora_config(self):
        from peft import LoraConfig

        targets = self.target_modules if self.target_modules == "all-linear" else list(self.target_modules)
        packed = getattr(self, "_packed", None)
        if packed is not None and targets != "all-linear":  # q_proj/v_proj are rows of one packed module
            targets = [t for t in targets if t not in PACKED_PARTS] + [packed.name]
        return LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def to_dict(self) -> dict[str, Any]:
        from flare_cli import __version__

        return {"flare_cli_version": __version__, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlareConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"flare_cli_version"})
        if unknown:
            raise ConfigError(f"flare_config.json has unknown keys {unknown} (written by a newer flare_cli?)")
        return cls(**{k: v for k, v in data.items() if k in known})


def read_flare_config(adapter_dir: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The raw flare_config.json of an adapter folder, or None if it has none
    (flare_cli.adapter_folder.AdapterFolder reads the whole folder)."""
    from flare_cli.adapter_folder import AdapterFolder

    return AdapterFolder.read(adapter_dir, require_adapter=False).raw or None


def write_json_atomic(path: Union[str, Path], data: Any) -> None:
    from flare_cli.fsutil import atomic_write_json

    atomic_write_json(path, data, indent=2, sort_keys=True)


PACKED_PARTS = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}


@dataclass(frozen=True)
class PackedProjection:
    """A fused q/k/v projection (Phi-3's ``qkv_proj``) standing in for q_proj, k_proj and v_proj:
    its output rows are [q | k | v] with ``sizes`` rows each; FLARE fuses the ``fused`` parts, gives
    the ``plain`` parts ordinary LoRA and leaves the rest without an update."""

    name: str
    sizes: tuple[int, int, int]
    fused: tuple[str, ...]
    plain: tuple[str, ...]

    def segments(self) -> list[tuple[int, int, str]]:
        """(first row, end row, "fused" | "plain" | "off") for q, k and v."""
        out, start = [], 0
        for part, size in zip("qkv", self.sizes):
            mode = "fused" if part in self.fused else "plain" if part in self.plain else "off"
            out.append((start, start + size, mode))
            start += size
        return out


def _linear_names(model: nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return sorted(names - {"lm_head"})


def _check_fused_inputs(model: nn.Module, wanted: list[str], arch: str) -> None:
    """The pivot is the layer's hidden state, and it enters through the module's own A: a module
    whose input is wider (an MLP's down_proj reads the intermediate size) cannot fuse it. Refused in
    one line instead of a shape error in the first forward."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not hidden or not wanted:
        return
    inputs: dict[str, set[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            inputs.setdefault(name.rsplit(".", 1)[-1], set()).add(module.in_features)
    wide = [m for m in wanted if inputs.get(m, {hidden}) != {hidden}]
    if wide:
        readers = [m for m, sizes in sorted(inputs.items()) if sizes == {hidden}]
        raise ConfigError(
            f"fused modules {wide} of {arch} do not read the hidden state ({hidden} features); FLARE fuses "
            f"the layer's hidden state through the module's LoRA A, so only these can fuse: {', '.join(readers)}"
        )


def resolve_modules(model: nn.Module, config: FlareConfig) -> None:
    """Map the method's module names onto this architecture, or refuse in one line.

    Llama, Mistral, Qwen2, Gemma 2/3 have q_proj and v_proj. Phi-3 packs them into one
    ``qkv_proj``: "fuse q_proj and v_proj" then means its q and v output rows (k rows stay plain LoRA
    when k is a target, else untouched), recorded on the config (not saved: it follows the model).
    """
    available = _linear_names(model)
    arch = type(model).__name__
    targets = None if config.target_modules == "all-linear" else list(config.target_modules)
    wanted = list(config.fused_modules) if config.is_fused else []
    missing_fused = [m for m in wanted if m not in available]
    packed_name = "qkv_proj"
    if missing_fused and packed_name in available and all(m in PACKED_PARTS for m in missing_fused + wanted):
        mc = getattr(model, "config", None)
        heads = getattr(mc, "num_attention_heads", None)
        kv_heads = getattr(mc, "num_key_value_heads", None) or heads
        head_dim = getattr(mc, "head_dim", None) or (mc.hidden_size // heads if heads else None)
        if not heads or not head_dim:
            raise ConfigError(f"{arch}: cannot split {packed_name} into q, k and v (no head counts in its config)")
        sizes = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
        out_features = {m.out_features for n, m in model.named_modules() if n.endswith("." + packed_name)}
        if out_features != {sum(sizes)}:
            raise ConfigError(f"{arch}: {packed_name} has {sorted(out_features)} output rows, not q+k+v = {sum(sizes)}")
        fused = tuple(PACKED_PARTS[m] for m in wanted)
        lora = "qkv" if targets is None else "".join(PACKED_PARTS[t] for t in targets if t in PACKED_PARTS)
        config._packed = PackedProjection(packed_name, sizes, fused, tuple(p for p in "qkv" if p in lora and p not in fused))
    else:
        config._packed = None
        if missing_fused:
            raise ConfigError(
                f"fused modules {missing_fused} not found in {arch}; its linear modules are: {', '.join(available)}"
            )
        _check_fused_inputs(model, wanted, arch)
    resolved = [t for t in targets or [] if not (config._packed is not None and t in PACKED_PARTS)]
    missing = [t for t in resolved if t not in available]
    if missing:
        raise ConfigError(f"target modules {missing} not found in {arch}; its linear modules are: {', '.join(available)} (or all-linear)")


def _lora_config_for(config: FlareConfig, lora_config=None):
    lora_config = lora_config or config.to_lora_config()
    if config.is_fused:
        lora_config._register_custom_module({nn.Linear: FlareLinear})
        lora_config._flare_settings = config  # read by FlareLinear.resolve_lora_variant; not saved by peft
    return lora_config


def _check_mt_encoder(config: FlareConfig, mt_encoder) -> None:
    if mt_encoder is None:
        raise ConfigError("a flare-mt model needs its MT encoder (mt_encoder=, see flare_cli.flare.load_mt_encoder)")
    if config.mt_hidden_size is None:
        config.mt_hidden_size = mt_encoder.hidden_size
    elif config.mt_hidden_size != mt_encoder.hidden_size:
        raise ModelError(
            f"MT encoder {mt_encoder.model_id!r} has hidden size {mt_encoder.hidden_size}, but this adapter's "
            f"projection expects {config.mt_hidden_size} (mt_model {config.mt_model!r})"
        )
    if config.mt_model is None:
        config.mt_model = mt_encoder.model_id


def get_flare_model(
    model: nn.Module, config: FlareConfig, adapter_name: str = "default", *, mt_encoder=None
) -> "FlareModel":
    """Wrap a HF causal LM, or an encoder with a task head (XLM-R), with a fresh FLARE (or plain
    LoRA) adapter, B = 0 as in peft.

    FLARE-MT also takes the frozen ``mt_encoder`` (``flare_cli.flare.load_mt_encoder``).
    """
    from peft import get_peft_model

    if config.reads_mt:
        _check_mt_encoder(config, mt_encoder)
    resolve_modules(model, config)
    # an encoder (XLM-R) gets its head's peft task type and trains the head as modules_to_save
    lora_config = adapt_lora_config(config.to_lora_config(), model)
    peft_model = get_peft_model(model, _lora_config_for(config, lora_config), adapter_name=adapter_name)
    return FlareModel(peft_model, config, mt_encoder=mt_encoder)


def load_flare_model(
    model: nn.Module,
    adapter_dir: Union[str, Path],
    *,
    is_trainable: bool = False,
    adapter_name: str = "default",
    mt_encoder=None,
    merge_task_adapter: bool = True,
) -> "FlareModel":
    """Load an adapter saved by FlareModel.save_pretrained onto ``model`` and restore its fusion.

    ``adapter_dir`` is a folder or a Hub repo ``user/name[@revision]``. A pushed repo carries its
    stage-1 task adapter (``meta.bundled_task_adapter``): it is merged into ``model`` first, as in
    training, unless ``merge_task_adapter=False`` (``model`` has it already).
    A FLARE-MT adapter loads its frozen MT encoder from ``mt_model``/``mt_revision`` in
    flare_config.json unless ``mt_encoder`` is given.
    """
    from peft import LoraConfig, PeftModel
    from safetensors import SafetensorError

    if not Path(adapter_dir).exists():
        from flare_cli.hub import resolve_adapter

        adapter_dir = resolve_adapter(adapter_dir)
    from flare_cli.adapter_folder import AdapterFolder

    adapter_dir = Path(adapter_dir)
    folder = AdapterFolder.read(adapter_dir)  # the one reader: strict FlareConfig, provenance in meta
    config = folder.flare_config()
    if config.reads_mt:
        if mt_encoder is None:
            if not config.mt_model:
                raise ModelError(f"{adapter_dir}: a flare-mt adapter without mt_model in {FLARE_CONFIG_NAME}")
            from flare_cli.flare.mt_encoder import load_mt_encoder

            dtype = model.get_input_embeddings().weight.dtype
            mt_encoder = load_mt_encoder(config.mt_model, config.mt_revision, dtype=dtype)
        _check_mt_encoder(config, mt_encoder)
    bundled = config.meta.get("bundled_task_adapter")
    if bundled and merge_task_adapter:
        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir / bundled)).merge_and_unload()
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise ModelError(f"{adapter_dir / bundled}: cannot merge the bundled task adapter ({first_line(err)})") from None
    resolve_modules(model, config)
    lora_config = _lora_config_for(config, LoraConfig.from_pretrained(str(adapter_dir)))
    try:
        with warnings.catch_warnings():
            # FLARE tensors are checked and restored below (an error if any is missing): silence
            # peft's warning when it lists only those
            warnings.filterwarnings("ignore", message=_ONLY_FLARE_KEYS_MISSING)
            peft_model = PeftModel.from_pretrained(
                model, str(adapter_dir), config=lora_config, is_trainable=is_trainable, adapter_name=adapter_name
            )
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as err:  # SafetensorError: truncated file
        raise ModelError(f"{adapter_dir}: cannot load adapter ({first_line(err)})") from None
    _restore_flare_tensors(peft_model, adapter_dir, adapter_name)
    return FlareModel(peft_model, config, mt_encoder=mt_encoder)


FLARE_TENSOR_MARKER = ".lora_flare_"
_ONLY_FLARE_KEYS_MISSING = r"Found missing adapter keys while loading the checkpoint: \[('[^']*\.lora_flare_[^']*'(, )?)+\]\.?$"
_OLD_XATTN_KEY = re.compile(r"^(.*\.lora_flare_xattn)\.[^.]+\.([qkvo])\.weight$")


def _flare_checkpoint_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The ``lora_flare_*`` tensors of a saved adapter, keyed as peft saves them (no adapter name).

    Folders from flare_cli 0.1.0 stored cross_attention as four tensors under the adapter name
    (``lora_flare_xattn.<name>.q.weight``, ...); they are stacked into today's single tensor."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if FLARE_TENSOR_MARKER in k}
    old: dict[str, dict[str, torch.Tensor]] = {}
    for key in [k for k in tensors if _OLD_XATTN_KEY.match(k)]:
        prefix, part = _OLD_XATTN_KEY.match(key).groups()
        old.setdefault(prefix, {})[part] = tensors.pop(key)
    for prefix, parts in old.items():
        if sorted(parts) != ["k", "o", "q", "v"]:
            raise ModelError(f"{adapter_dir}: incomplete cross-attention tensors under {prefix}")
        tensors[f"{prefix}.weight"] = torch.stack([parts[p] for p in "qkvo"])
    return tensors


def _restore_flare_tensors(peft_model: nn.Module, adapter_dir: Path, adapter_name: str) -> None:
    """Put every ``lora_flare_*`` tensor of the folder into the model, whatever the adapter name.

    peft only warns about missing keys and would leave a FLARE tensor at its fresh initialisation;
    here a FLARE tensor the model has but the folder lacks, or the reverse, is an error."""
    saved = _flare_checkpoint_tensors(adapter_dir)
    wanted: dict[str, nn.Parameter] = {}
    for name, param in peft_model.named_parameters():
        parts = name.split(".")
        if FLARE_TENSOR_MARKER in name and len(parts) > 2 and parts[-2] == adapter_name:
            wanted[".".join(parts[:-2] + parts[-1:])] = param  # the checkpoint key: adapter name removed
    missing, unexpected = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if missing or unexpected:
        what = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        what += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise ModelError(f"{adapter_dir}: FLARE tensors do not match this model and flare_config.json: {'; '.join(what)}")
    with torch.no_grad():
        for key, param in wanted.items():
            if saved[key].shape != param.shape:
                raise ModelError(
                    f"{adapter_dir}: FLARE tensor {key} has shape {tuple(saved[key].shape)}, the model expects {tuple(param.shape)}"
                )
            param.copy_(saved[key].to(param.device, param.dtype))


def _cache_offset_setter(session: PivotSession):
    """Forward pre-hook for the LM in generate: tell the session how many tokens the KV cache holds
    before this call (0 for the prefill and for every uncached call), as transformers counts them."""

    def hook(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.x renamed it
        session.offset = cache.get_seq_length() if cache is not None else 0

    return hook


class FlareModel(nn.Module):
    """A peft model whose fused LoRA modules read the English pivot.

    Every forward attaches a fresh ``PivotSession`` to the fused modules and leaves it attached
    until the next forward, so a backward pass that recomputes checkpointed layers still sees the
    pivot (the reference code silently trained plain LoRA under gradient checkpointing).
    """

    def __init__(self, peft_model: nn.Module, config: FlareConfig, mt_encoder: Optional[nn.Module] = None):
        super().__init__()
        self.peft_model = peft_model
        self.flare_config = config
        named = list(peft_model.named_modules())
        self._fused = [m for _, m in named if isinstance(m, FlareLinear) and m.is_fused]
        self._fused_layers = sorted({m.flare_layer for m in self._fused})
        if config.is_fused and not self._fused:
            raise ConfigError(
                f"no module matches fused modules {config.fused_modules} (layers {config.fused_layers})"
            )
        self.mt_encoder = None
        self._mt_owners: dict[int, FlareLinear] = {}
        if config.reads_mt:
            self._mt_owners = {m.flare_layer: m for m in self._fused if len(m.lora_flare_mtproj) > 0}
            if not self._mt_owners:
                raise ConfigError(f"flare-mt: no fused {config.fused_modules[0]} module to hold the MT projection")
            embed = self.base_model.get_input_embeddings().weight
            self.mt_encoder = mt_encoder.to(device=embed.device, dtype=embed.dtype)

    # -- plumbing --------------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The underlying HF causal LM (with LoRA layers injected)."""
        return self.peft_model.get_base_model()

    @property
    def fused_layers(self) -> list[int]:
        return list(self._fused_layers)

    def _attach(self, session: Optional[PivotSession]) -> None:
        for module in self._fused:
            module.flare_session = session

    def release(self) -> None:
        """Detach pivot states (frees their memory); fused layers then refuse to run."""
        self._attach(None)

    # -- gradient checkpointing ----------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        """Non-reentrant activation checkpointing of every decoder layer, bound to the pivot.

        Each checkpointed layer remembers the pivot session of the forward that ran it and puts it
        back while backward recomputes that layer. So several forwards may precede one backward
        (summed losses, chosen/rejected pairs) and each recomputation still fuses its own pivot.
        Enabling checkpointing on the base model directly works for one forward per backward only.
        """
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if kwargs["use_reentrant"]:
            raise ConfigError("FLARE needs non-reentrant gradient checkpointing (use_reentrant=False)")
        kwargs["context_fn"] = self._checkpoint_contexts
        lm = self.base_model
        enable = getattr(lm, "activation_checkpointing_enable", None)  # transformers >= 5.x naming
        if enable is not None:
            enable(kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def _checkpoint_contexts(self):
        """torch.utils.checkpoint context_fn: nothing in forward; in recomputation, this forward's session."""
        if not self._fused:
            return contextlib.nullcontext(), contextlib.nullcontext()
        return contextlib.nullcontext(), self._reattached(self._fused[0].flare_session)

    @contextlib.contextmanager
    def _reattached(self, session: Optional[PivotSession]):
        current = self._fused[0].flare_session
        self._attach(session)
        try:
            yield
        finally:
            self._attach(current)

    # -- the pivot -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_pivot(self, pivot_input_ids: torch.Tensor, pivot_attention_mask: torch.Tensor) -> dict[int, torch.Tensor]:
        """Hidden states entering each fused layer, from the frozen base (adapters off) over the pivot."""
        if not self._fused_layers:
            return {}
        with self.peft_model.disable_adapter():
            # under FSDP2 this runs inside the sharded model's own forward: each layer gathers
            # its shard as usual (flare_cli/flare/pivot.py stops before gathering one too many)
            return capture_layer_inputs(
                self.base_model,
                find_decoder_layers(self.base_model),
                self._fused_layers,
                pivot_input_ids,
                pivot_attention_mask,
                source_norm=self.flare_config.source_norm,
            )

    def pivot_session(
        self,
        pivot_input_ids: torch.Tensor,
        pivot_attention_mask: torch.Tensor,
        target_prompt_mask: torch.Tensor,
        *,
        for_generation: bool = False,
    ) -> PivotSession:
        """Encode the pivot and align it to the target prompt positions."""
        if pivot_input_ids.shape[0] != target_prompt_mask.shape[0]:
            raise PivotError(
                f"pivot batch has {pivot_input_ids.shape[0]} rows but the target batch has {target_prompt_mask.shape[0]}"
            )
        raw = self.encode_pivot(pivot_input_ids, pivot_attention_mask)
        index, present = align_index(pivot_attention_mask, target_prompt_mask, self.flare_config.align)
        states = {layer: gather_aligned(h, index, present) for layer, h in raw.items()}
        return PivotSession(states=states, present=present, for_generation=for_generation)

    # -- FLARE-MT ----------------------------------------------------------------------------
    def mt_projection(self, layer: int) -> nn.Linear:
        """The trainable map d_mt -> d_model whose output is ``h`` in fused layer ``layer``."""
        owner = self._mt_owners.get(layer) if self.flare_config.mt_projection == "per-layer" else next(
            iter(self._mt_owners.values())
        )
        if owner is None:
            raise PivotError(f"flare-mt: fused layer {layer} has no MT projection")
        active = self.peft_model.active_adapter
        return owner.lora_flare_mtproj[active if isinstance(active, str) else active[0]]

    def mt_session(
        self,
        mt_input_ids: torch.Tensor,
        mt_attention_mask: torch.Tensor,
        target_prompt_mask: torch.Tensor,
        *,
        for_generation: bool = False,
    ) -> PivotSession:
        """Run the frozen MT encoder (no_grad), align its states to the target prompt positions and
        project them (with grad: the projection trains) to the pivot state of every fused layer."""
        if mt_input_ids.shape[0] != target_prompt_mask.shape[0]:
            raise PivotError(
                f"MT batch has {mt_input_ids.shape[0]} rows but the target batch has {target_prompt_mask.shape[0]}"
            )
        encoded = self.mt_encoder(mt_input_ids, mt_attention_mask)  # (B, Ls, d_mt), frozen
        mask = mt_attention_mask.to(target_prompt_mask.device)
        index, present = align_index(mask, target_prompt_mask, self.flare_config.align)
        first = self.mt_projection(self._fused_layers[0]).weight
        aligned = gather_aligned(encoded.to(first.device, first.dtype), index.to(first.device), present.to(first.device))
        if self.flare_config.mt_projection == "shared":
            h = self.mt_projection(self._fused_layers[0])(aligned)  # one map, computed once per forward
            states = {layer: h for layer in self._fused_layers}
        else:  # no bias: zero (absent) positions stay zero
            states = {layer: self.mt_projection(layer)(aligned) for layer in self._fused_layers}
        return PivotSession(states=states, present=present, for_generation=for_generation)

    # -- running ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        *,
        prompt_mask: Optional[torch.Tensor] = None,
        pivot_input_ids: Optional[torch.Tensor] = None,
        pivot_attention_mask: Optional[torch.Tensor] = None,
        mt_input_ids: Optional[torch.Tensor] = None,
        mt_attention_mask: Optional[torch.Tensor] = None,
        no_pivot: bool = False,
        **kwargs: Any,
    ):
        """Fused forward. ``prompt_mask`` (B, L) marks target prompt tokens (default: every real
        token); answer and padding positions are absent. ``no_pivot=True`` runs phi(0, T).
        FLARE-MT takes ``mt_input_ids``/``mt_attention_mask`` (the target prompt in MT-encoder
        tokens, tagged with the target language) instead of the pivot."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # drop the last forward's pivot states first: otherwise they and the new ones are both
        # alive while the pivot pass runs (a peak of two sets of states)
        self.release()
        self._attach(self._session_for(
            input_ids, attention_mask, prompt_mask, pivot_input_ids, pivot_attention_mask, no_pivot,
            mt_input_ids=mt_input_ids, mt_attention_mask=mt_attention_mask,
        ))
        return self.peft_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def _session_for(self, input_ids, attention_mask, prompt_mask, pivot_input_ids, pivot_attention_mask, no_pivot,
                     for_generation=False, mt_input_ids=None, mt_attention_mask=None):
        if not self._fused:
            return None
        if no_pivot:
            return PivotSession()
        if self.flare_config.reads_mt:
            if mt_input_ids is None:
                raise PivotError(
                    "this FLARE-MT adapter needs mt_input_ids (the target prompt in MT-encoder tokens), or no_pivot=True"
                )
            if mt_attention_mask is None:
                mt_attention_mask = torch.ones_like(mt_input_ids)
            target_mask = attention_mask.bool() if prompt_mask is None else prompt_mask.bool() & attention_mask.bool()
            return self.mt_session(mt_input_ids, mt_attention_mask, target_mask, for_generation=for_generation)
        if pivot_input_ids is None:
            raise PivotError("this FLARE adapter needs pivot_input_ids (the English pivot prompt), or no_pivot=True")
        if pivot_attention_mask is None:
            pivot_attention_mask = torch.ones_like(pivot_input_ids)
        target_mask = attention_mask.bool() if prompt_mask is None else prompt_mask.bool() & attention_mask.bool()
        return self.pivot_session(pivot_input_ids, pivot_attention_mask, target_mask, for_generation=for_generation)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        *,
        pivot_input_ids: Optional[torch.Tensor] = None,
        pivot_attention_mask: Optional[torch.Tensor] = None,
        mt_input_ids: Optional[torch.Tensor] = None,
        mt_attention_mask: Optional[torch.Tensor] = None,
        no_pivot: bool = False,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """HF generate with the prompt fused; generated tokens are absent.

        One extra no-grad prefill over the pivot, never a generation on it (FLARE-MT: one pass of
        the MT encoder over the target prompt, no English at all). Works with and without the KV
        cache (an uncached step recomputes the prompt, fused again) and with beam search or several
        return sequences (each row's pivot follows its copies).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.release()
        session = self._session_for(
            input_ids, attention_mask, None, pivot_input_ids, pivot_attention_mask, no_pivot, for_generation=True,
            mt_input_ids=mt_input_ids, mt_attention_mask=mt_attention_mask,
        )
        handle = None
        if session is not None and session.states is not None:
            handle = self.base_model.register_forward_pre_hook(_cache_offset_setter(session), with_kwargs=True)
        self._attach(session)
        try:
            return self.peft_model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        finally:
            if handle is not None:
                handle.remove()
            self.release()

    # -- saving ----------------------------------------------------------------------------
    @property
    def adapter_name(self) -> str:
        active = self.peft_model.active_adapter
        return active if isinstance(active, str) else active[0]

    def save_pretrained(self, output_dir: Union[str, Path], **kwargs: Any) -> None:
        """peft adapter files plus flare_config.json (written last, atomically), all in ``output_dir``
        whatever the adapter's name (peft alone puts a non-default adapter in a subfolder named after
        it, where ``load_flare_model(output_dir)`` would not look)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        name = self.adapter_name
        if name == "default":
            self.peft_model.save_pretrained(str(output_dir), safe_serialization=True, **kwargs)
        else:
            with tempfile.TemporaryDirectory(dir=output_dir, prefix=".save-") as tmp:
                self.peft_model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[name], **kwargs)
                for folder in (Path(tmp) / name, Path(tmp)):
                    for item in folder.iterdir():
                        if item.is_file():
                            os.replace(item, output_dir / item.name)
        write_json_atomic(output_dir / FLARE_CONFIG_NAME, self.flare_config.to_dict())

    def merge_and_unload(self):
        """Fold a plain LoRA adapter into the base; raises MergeError for a fused adapter."""
        return self.peft_model.merge_and_unload()
