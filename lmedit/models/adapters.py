"""One place that knows where things live in each architecture.

Every method asks the adapter for abstract sites ("the MLP output projection of layer L")
instead of spelling module paths. Architectures are data keyed by `config.model_type`;
adding one is a row in ARCHITECTURES plus a test.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .hooks import ReplayLowerBlocks


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # the ModuleList of blocks
    mlp: str  # relative to a block
    mlp_in: tuple[str, ...]  # input projection(s), relative to a block (gate first if gated)
    mlp_out: str  # output projection, relative to a block
    attn: str
    attn_out: str
    embed: str
    final_norm: str
    unembed: str
    conv1d: bool = False  # GPT-2 stores Linear weights transposed, as (in, out)
    # a norm applied to the MLP output before it is added to the residual (Gemma 2/3), relative to a block
    mlp_post_norm: str | None = None


_LLAMA_LIKE = ArchSpec(
    layers="model.layers", mlp="mlp", mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj",
    attn="self_attn", attn_out="self_attn.o_proj", embed="model.embed_tokens",
    final_norm="model.norm", unembed="lm_head",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma3_text": replace(_LLAMA_LIKE, mlp_post_norm="post_feedforward_layernorm"),
    "gemma3": ArchSpec(
        layers="model.language_model.layers", mlp="mlp", mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        mlp_out="mlp.down_proj", attn="self_attn", attn_out="self_attn.o_proj",
        embed="model.language_model.embed_tokens", final_norm="model.language_model.norm", unembed="lm_head",
        mlp_post_norm="post_feedforward_layernorm",
    ),
    "gpt2": ArchSpec(
        layers="transformer.h", mlp="mlp", mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj", attn="attn",
        attn_out="attn.c_proj", embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head",
        conv1d=True,
    ),
    "gptj": ArchSpec(
        layers="transformer.h", mlp="mlp", mlp_in=("mlp.fc_in",), mlp_out="mlp.fc_out", attn="attn",
        attn_out="attn.out_proj", embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head",
    ),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers", mlp="mlp", mlp_in=("mlp.dense_h_to_4h",), mlp_out="mlp.dense_4h_to_h",
        attn="attention", attn_out="attention.dense", embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm", unembed="lm_head",
    ),
}


class UnsupportedArchitecture(ValueError):
    pass


class ModelAdapter:
    """Named access to the parts of one loaded model that editing methods need."""

    def __init__(self, model: nn.Module):
        model_type = getattr(model.config, "model_type", None)
        if model_type not in ARCHITECTURES:
            raise UnsupportedArchitecture(
                f"no adapter for model_type {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
            )
        self.model = model
        self.model_type = model_type
        self.spec = ARCHITECTURES[model_type]
        self.n_layers = len(self.module(self.spec.layers))

    # --- module paths -------------------------------------------------------------------
    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    def _check_layer(self, layer: int) -> int:
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range for a model with {self.n_layers} layers")
        return layer % self.n_layers

    def block_path(self, layer: int) -> str:
        return f"{self.spec.layers}.{self._check_layer(layer)}"

    def mlp_path(self, layer: int) -> str:
        return f"{self.block_path(layer)}.{self.spec.mlp}"

    def mlp_out_path(self, layer: int) -> str:
        return f"{self.block_path(layer)}.{self.spec.mlp_out}"

    def mlp_in_paths(self, layer: int) -> list[str]:
        return [f"{self.block_path(layer)}.{p}" for p in self.spec.mlp_in]

    def attn_out_path(self, layer: int) -> str:
        return f"{self.block_path(layer)}.{self.spec.attn_out}"

    def mlp_post_norm_path(self, layer: int) -> str | None:
        """The norm between the MLP output projection and the residual stream, if the family has one:
        there a change of the projection's output is not a change of the residual."""
        return f"{self.block_path(layer)}.{self.spec.mlp_post_norm}" if self.spec.mlp_post_norm else None

    # --- modules ------------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        return self.module(self.block_path(layer))

    def mlp_out(self, layer: int) -> nn.Module:
        return self.module(self.mlp_out_path(layer))

    def embed(self) -> nn.Module:
        return self.module(self.spec.embed)

    def final_norm(self) -> nn.Module:
        return self.module(self.spec.final_norm)

    def unembed(self) -> nn.Module:
        return self.module(self.spec.unembed)

    def replay_below(self, layer: int, **inputs) -> ReplayLowerBlocks:
        """Context in which blocks 0..layer-1 replay their output for exactly these model inputs
        (for optimisation loops that change nothing below `layer`; see ReplayLowerBlocks)."""
        return ReplayLowerBlocks(self.model, self.module(self.spec.layers), self._check_layer(layer), **inputs)

    # --- weights as (out, in) matrices ---------------------------------------------------
    def mlp_out_weight(self, layer: int) -> nn.Parameter:
        """The parameter itself (its stored layout; see `as_out_in`)."""
        return self.mlp_out(layer).weight

    def as_out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """View a projection weight as (d_out, d_in) whatever the storage; in-place ops write through."""
        return weight.T if self.spec.conv1d else weight

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.n_embd

    def param_name(self, module_path: str, attr: str = "weight") -> str:
        return f"{module_path}.{attr}"
