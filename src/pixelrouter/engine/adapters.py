"""LoRA adapters in the pipeline, with diffusers' own machinery: checked once when registered,
loaded by name (`load_lora_into_transformer`), chosen per batch (`set_adapters` /
`disable_lora`), a bounded number kept loaded (LRU by last use, `delete_adapters`); or one
adapter fused into the transformer's weights for good (`fuse_lora`, `[server] fuse_lora`).

Everything here runs on the engine's worker thread, between batches. An adapter is read from
its file once, at registration, and kept (weights and metadata) in host memory, so a later
swap never reads the file again and cannot fail on it at request time.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pixelrouter.engine.pipeline import describe_error
from pixelrouter.errors import PixelrouterError
from pixelrouter.lora_files import local_path
from pixelrouter.loras import LoraCheck, LoraRegistry, LoraSpec
from pixelrouter.types import LoraChoice

logger = logging.getLogger(__name__)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
PREFIX = "transformer."  # diffusers' format: every key under the pipeline's transformer
# The linear layers of FLUX.2's transformer a LoRA trainer targets (PEFT `target_modules`, matched
# as name suffixes): the attention of the image and text streams, the single-stream blocks'
# fused projection and the feed-forward layers. Tests and bench/loras.py make adapters on these.
LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "to_qkv_mlp_proj",
    "linear_in",
    "linear_out",
)


class _AdapterRefused(Exception):
    """The adapter cannot be used with this pipeline; the message says why."""


@dataclass
class _Checked:
    """An accepted adapter: its state dict and metadata as diffusers read them from the file."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None


class Adapters:
    """The adapters of one pipeline: the accepted ones in host memory, some loaded in it."""

    def __init__(self, pipe: Any, capacity: int) -> None:
        self.pipe = pipe
        self.capacity = max(1, capacity)
        self._checked: dict[str, _Checked] = {}
        self._loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._active: tuple[LoraChoice, ...] | None = ()  # None: unknown, set it next time
        self.fused: LoraChoice | None = None  # in the weights for good: the only set served
        self.loads = 0
        self.evictions = 0
        self.load_seconds = 0.0

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    # ------------------------------------------------------------------ registration

    def check(self, spec: LoraSpec) -> LoraCheck:
        """Read the adapter, check that every target exists in this transformer with the
        adapter's shapes, load it once through diffusers, and report rank and dtype; a refused
        adapter leaves the pipeline as it was. A fused pipeline takes no other adapter."""
        if self.fused is not None:
            return LoraCheck(
                ok=False,
                reason=f"this engine serves only the adapter {self.fused.name!r}, fused into its "
                f"weights at scale {self.fused.scale:g}, and loads no other",
            )
        try:
            state_dict, metadata = self._read(spec)
            check = self._inspect(state_dict)
        except _AdapterRefused as exc:
            return LoraCheck(ok=False, reason=str(exc))
        self._checked[spec.name] = _Checked(state_dict, metadata)
        try:
            self._make_room(keep=[])
            self._load(spec.name)
        except Exception as exc:
            del self._checked[spec.name]
            logger.warning("loading the adapter %s failed", spec.name, exc_info=True)
            return LoraCheck(
                ok=False, reason=f"diffusers could not load it: {describe_error(exc, 200)}"
            )
        return check

    def register(self, spec: LoraSpec, registry: LoraRegistry) -> LoraCheck:
        """`check` `spec` and record the outcome in `registry`: an accepted adapter is added
        (if new); a refused one changes a configured adapter's record only, so requests that
        name it hear why. Logged either way."""
        check = self.check(spec)
        if check.ok:
            if registry.get(spec.name) is None:
                registry.add(spec)
            registry.record(spec.name, check)
            logger.info(
                "LoRA adapter %s: rank %d, %s, %d layers, from %s",
                spec.name,
                check.rank,
                check.dtype,
                len(check.targets),
                spec.path,
            )
        else:
            if registry.get(spec.name) is not None:
                registry.record(spec.name, check)
            logger.error("LoRA adapter %s refused: %s", spec.name, check.reason)
        return check

    def forget(self, name: str) -> None:
        """Unload the adapter and drop its weights (an adapter that was removed)."""
        if name in self._loaded:
            self._unload(name)
        self._checked.pop(name, None)

    def _read(self, spec: LoraSpec) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        try:
            path = local_path(spec.path)  # a Hugging Face reference: its file in the cache
        except PixelrouterError as exc:
            raise _AdapterRefused(exc.message) from None
        if not os.path.exists(path):
            raise _AdapterRefused(f"no file or directory at {path}")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, WEIGHT_NAME)):
            raise _AdapterRefused(
                f"the directory {path} holds no {WEIGHT_NAME} (diffusers' save_lora_weights "
                "writes that name); name the .safetensors file itself in 'path'"
            )
        if os.path.isfile(path) and not path.endswith(".safetensors"):
            raise _AdapterRefused(f"{path} is not a .safetensors file")
        try:
            state_dict, metadata = self.pipe.lora_state_dict(
                path, return_lora_metadata=True, local_files_only=True
            )
        except Exception as exc:
            raise _AdapterRefused(
                f"{path} is not a readable LoRA safetensors file ({describe_error(exc, 160)})"
            ) from exc
        if not state_dict:
            raise _AdapterRefused(f"{path} holds no tensors")
        return state_dict, metadata

    def _inspect(self, state_dict: dict[str, torch.Tensor]) -> LoraCheck:
        """Every key a LoRA factor of an existing linear layer of this transformer, shapes
        matching: an adapter trained for another model is refused here, with the first layer
        that does not fit."""
        transformer = self.pipe.transformer
        others = [k for k in state_dict if not k.startswith(PREFIX)]
        if others:
            raise _AdapterRefused(
                f"it holds weights for something other than the transformer ({others[0]}); "
                "only transformer LoRA adapters in diffusers format are served"
            )
        factors: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state_dict.items():
            module, _, factor = key[len(PREFIX) :].rpartition(".lora_")
            kind = factor.split(".")[0]
            if not module or kind not in ("A", "B"):
                raise _AdapterRefused(
                    f"{key} is not a LoRA factor (lora_A / lora_B); LoKr, DoRA and full "
                    "weights are not served"
                )
            if not factor.endswith("weight"):
                raise _AdapterRefused(f"{key}: LoRA biases are not served")
            factors.setdefault(module, {})[kind] = tensor
        ranks: set[int] = set()
        dtypes: set[str] = set()
        parameters = 0
        for module, pair in sorted(factors.items()):
            if set(pair) != {"A", "B"}:
                raise _AdapterRefused(f"{module} has lora_{''.join(pair)} without its partner")
            try:
                layer = transformer.get_submodule(module)
            except AttributeError:
                raise _AdapterRefused(
                    f"it targets {module}, which this transformer does not have: an adapter "
                    "for another model"
                ) from None
            # A layer that holds adapters already is PEFT's wrapper around the linear one.
            layer = getattr(layer, "base_layer", layer)
            if not isinstance(layer, torch.nn.Linear):
                raise _AdapterRefused(f"it targets {module}, which is not a linear layer here")
            a, b = pair["A"], pair["B"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise _AdapterRefused(
                    f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not "
                    "make a low-rank pair"
                )
            if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
                raise _AdapterRefused(
                    f"{module} is {layer.in_features}->{layer.out_features} in this "
                    f"transformer but the adapter's is {a.shape[1]}->{b.shape[0]}: an adapter "
                    "for another model"
                )
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise _AdapterRefused(f"{module} holds NaN or infinite weights")
            ranks.add(int(a.shape[0]))
            dtypes.update(str(t.dtype).removeprefix("torch.") for t in (a, b))
            parameters += a.numel() + b.numel()
        return LoraCheck(
            ok=True,
            rank=max(ranks),
            dtype="/".join(sorted(dtypes)),
            targets=tuple(sorted(factors)),
            parameters=parameters,
        )

    # ------------------------------------------------------------------ per batch

    def activate(self, choices: Sequence[LoraChoice]) -> None:
        """Make exactly `choices` (names and scales, in order) the pipeline's active adapters,
        loading any that are not loaded (and unloading the least recently used beyond the
        capacity); no choices: the base model, with the adapters' layers switched off."""
        choices = tuple(choices)
        if self.fused is not None:  # the edges and the engine's door refuse anything else
            if not _same(choices, (self.fused,)):
                raise _AdapterRefused(
                    f"the adapter {self.fused.name!r} is fused at {self.fused.scale:g}: this "
                    f"engine makes nothing else (asked for {list(choices)})"
                )
            return
        if self._active is not None and _same(choices, self._active):
            for choice in choices:
                self._loaded.move_to_end(choice.name)
            return
        names = [choice.name for choice in choices]
        missing = [name for name in names if name not in self._checked]
        if missing:
            raise _AdapterRefused(f"adapter(s) not registered with this engine: {missing}")
        for name in names:
            if name in self._loaded:
                self._loaded.move_to_end(name)
            else:
                self._make_room(keep=names)
                self._load(name)
        self._active = None  # from here on the state is changed until set below
        if not choices:
            if self._loaded:
                self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, adapter_weights=[choice.scale for choice in choices])
        self._active = choices

    # ------------------------------------------------------------------ one adapter, fused

    def start(
        self,
        registry: LoraRegistry,
        register: Callable[[LoraSpec], LoraCheck],
        fuse: str | None,
    ) -> str | None:
        """The engine's start: every registered adapter through `register` (checked, recorded),
        the base model active, then `fuse` (`[server] fuse_lora`) fused; or why the engine
        cannot serve (an adapter to fuse that is not there or was refused)."""
        for spec in registry.specs():
            register(spec)
        self.activate(())
        return self.fuse_registered(registry, fuse) if fuse else None

    def fuse_registered(self, registry: LoraRegistry, name: str) -> str | None:
        """Fuse the registered adapter `name`, checked and accepted, at its default scale (the
        engine's start with `[server] fuse_lora`) and record it in the registry, which refuses
        every other adapter from then on; or say why it cannot be done."""
        spec, check = registry.get(name), registry.check_of(name)
        if spec is None or check is None:
            return f"[server] fuse_lora names {name!r}, which is not a registered adapter."
        if not check.ok:
            return (
                f"[server] fuse_lora names the adapter {name!r}, which was refused when it was "
                f"registered ({check.reason}); the engine serves nothing until that is fixed."
            )
        try:
            self.fuse(name, spec.default_scale)
        except Exception as exc:
            logger.exception("fusing the adapter %s failed", name)
            return f"Fusing the adapter {name!r} failed ({describe_error(exc, 200)})."
        registry.mark_fused(name)
        logger.info(
            "LoRA adapter %s fused into the transformer at scale %g: the only one served",
            name,
            spec.default_scale,
        )
        return None

    def fuse(self, name: str, scale: float) -> None:
        """diffusers' `fuse_lora` of the checked adapter `name` at `scale` into the transformer,
        then `unload_lora_weights`: PEFT's layers are gone, the weights hold W + scale * BA (in
        the model's dtype), so a step costs what the base model's does. Every other adapter is
        unloaded and forgotten; the base model is gone until the process restarts."""
        for other in list(self._loaded):
            if other != name:
                self._unload(other)
        self._checked = {name: self._checked[name]}
        self.activate([LoraChoice(name, 1.0)])  # loaded, the only active one, weight 1
        self.pipe.fuse_lora(components=["transformer"], lora_scale=scale, adapter_names=[name])
        self.pipe.unload_lora_weights()
        self._loaded.clear()
        self.fused = LoraChoice(name, scale)
        self._active = (self.fused,)

    def _make_room(self, keep: list[str]) -> None:
        """Unload least recently used adapters until one more fits (the batch's own are kept:
        a batch needs all of its adapters at once, even beyond the capacity)."""
        for name in list(self._loaded):
            if len(self._loaded) < self.capacity:
                return
            if name not in keep:
                self._unload(name)

    def _load(self, name: str) -> None:
        checked = self._checked[name]
        started = time.monotonic()
        self._active = None
        from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA

        # What `load_lora_weights(path, adapter_name=name)` does after reading the file.
        self.pipe.load_lora_into_transformer(
            dict(checked.state_dict),
            transformer=self.pipe.transformer,
            adapter_name=name,
            metadata=checked.metadata,
            _pipeline=self.pipe,
            low_cpu_mem_usage=_LOW_CPU_MEM_USAGE_DEFAULT_LORA,
        )
        self._loaded[name] = None
        self.loads += 1
        self.load_seconds += time.monotonic() - started

    def _unload(self, name: str) -> None:
        self._active = None
        self.pipe.delete_adapters(name)
        del self._loaded[name]
        self.evictions += 1

    def stats(self) -> dict[str, Any]:
        """What /api/v1/engine/status shows of the adapters."""
        return {
            "registered": len(self._checked),
            "loaded": self.loaded,
            "capacity": self.capacity,
            "loads": self.loads,
            "evictions": self.evictions,
            "load_seconds": round(self.load_seconds, 4),
            "fused": None
            if self.fused is None
            else {"name": self.fused.name, "scale": self.fused.scale},
        }


def _same(a: Sequence[LoraChoice], b: Sequence[LoraChoice]) -> bool:
    return [(c.name, c.scale) for c in a] == [(c.name, c.scale) for c in b]
