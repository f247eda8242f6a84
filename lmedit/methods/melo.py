"""MELO (Yu et al. 2024): per-edit LoRA adapters behind a router that activates only the matching one.

The adapters are those of `lora` (one named peft adapter per edit on the MLP projections of
`layers`). MELO's addition is a vector database that decides, for each input, which adapter runs:

  key      the hidden state after block `router_layer` (below every LoRA layer), averaged over the
           input's tokens except the first (in these models the first position carries a huge,
           input-independent activation that would make every key alike), L2-normalised
  database each edit stores the keys of its prompts, alone and followed by the target (so that
           generation, which sees the prompt, and teacher-forced scoring, which sees prompt and
           target, both find it)
  routing  per input row: the nearest stored key by cosine distance; if it lies within
           `router_radius`, that key's adapter is on for the row and every other adapter is off;
           otherwise no adapter runs and the row sees the unedited model

The gate is applied by a forward hook on each adapter's `lora_B` module (its output times 0 or 1
per row), so peft's own forward is untouched. The key is computed in the same forward pass as the
LoRA layers (the router layer comes first); during cached generation the gates chosen on the
prompt are kept for the following one-token steps.

Differences from the paper, on purpose: one adapter per edit instead of LoRA blocks shared by a
cluster of edits (so removing an edit deletes exactly its adapter and keys), and keys from the
edited model's own hidden states rather than a separate encoder. The router layer and radius were set by
measurement on SmolLM2-135M (first 100 ZsRE eval cases, one paraphrase and one locality prompt
each): with mean-pooled keys after block 10, an edit prompt's paraphrase lies at cosine distance
median 0.0135 and its own edit is the nearest of the 100 for 75% of paraphrases; 95% of locality
prompts lie farther than 0.049 from every edit. Layers 6/8/11 separated less, and the last token's
state (instead of the mean) matched question style rather than content (own edit nearest for ~50%).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._memory import model_device, request_batch
from .lora import Lora, LoraHparams, _Session
from .registry import register


@dataclass
class MeloHparams(LoraHparams):
    router_layer: int = field(default=10, metadata={"help": "block whose output gives the routing key (below every LoRA layer)"})
    router_radius: float = field(default=0.035, metadata={"help": "cosine distance within which an input is routed to an edit's adapter"})

    def validate(self):
        super().validate()
        self.check(self.router_layer < min(self.layers), "router_layer must lie below every LoRA layer")
        self.check(0 < self.router_radius <= 2, "router_radius must be in (0, 2]")


def pooled_key(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, d) hidden states, (B, T) attention mask -> (B, d) unit-norm mean over each row's tokens
    after its first."""
    m = torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask.to(hidden.device).float()
    first = (m.cumsum(1) == 1) & (m > 0) & (m.sum(1, keepdim=True) > 1)  # a one-token row keeps its token
    m = m * (~first).float()
    k = (hidden.float() * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    return torch.nn.functional.normalize(k, dim=-1)


class Router:
    """Key database and per-row gates of one model's MELO adapters."""

    def __init__(self, model, block, radius: float):
        self.radius = radius
        self.keys: dict[str, torch.Tensor] = {}  # adapter name -> (m, d) unit keys
        self.gates: dict[str, torch.Tensor] = {}  # adapter name -> (B,) 0/1 for the current forward
        self.last_keys: torch.Tensor | None = None
        self._mask = None
        self._decoding = False
        self._hooks = [model.register_forward_pre_hook(self._on_model, with_kwargs=True),
                       block.register_forward_hook(self._on_block)]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _on_model(self, _module, args, kwargs):
        self._mask = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values")
        self._decoding = bool(cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0)

    def _on_block(self, _module, _inputs, output):
        if self._decoding and self.gates:
            return  # one-token steps of cached generation keep the prompt's routing
        hidden = output[0] if isinstance(output, tuple) else output
        mask = self._mask
        if mask is not None and mask.shape[1] != hidden.shape[1]:
            mask = None
        self.last_keys = pooled_key(hidden.detach(), mask)
        self.gates = self.route(self.last_keys)

    def route(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per adapter, a (B,) 0/1 gate: 1 where that adapter owns the nearest key within the radius."""
        names = [n for n, k in self.keys.items() if len(k)]
        if not names:
            return {}
        bank = torch.cat([self.keys[n] for n in names]).to(keys.device)
        owner = torch.cat([torch.full((len(self.keys[n]),), i) for i, n in enumerate(names)]).to(keys.device)
        dist = 1 - keys @ bank.T  # (B, K)
        dmin, idx = dist.min(1)
        chosen = torch.where(dmin <= self.radius, owner[idx], torch.full_like(idx, -1))
        return {n: (chosen == i).float() for i, n in enumerate(names)}

    def gate_hook(self, name: str):
        def hook(_module, _inputs, output):
            g = self.gates.get(name)
            if g is None or g.shape[0] != output.shape[0]:
                return output * 0  # no routing decision for this batch: the adapter stays off
            return output * g.to(output.dtype).view(-1, *([1] * (output.dim() - 1)))
        return hook


@register
class Melo(Lora):
    name = "melo"
    hparams_cls = MeloHparams

    def _before_training(self, model, tok, adapter, session: _Session, name: str, requests, hp: MeloHparams) -> None:
        router = self._attach(model, adapter, session, name, hp)
        router.keys[name] = self._keys(model, tok, router, requests)

    def _attach(self, model, adapter, session: _Session, name: str, hp: MeloHparams) -> Router:
        """Put adapter `name` behind the model's router (created with the first adapter)."""
        if session.router is None:
            session.router = Router(model, adapter.block(hp.router_layer), hp.router_radius)
        router = session.router
        router.radius = hp.router_radius
        for module in model.modules():  # gate every LoRA layer's B projection of this adapter
            lora_b = getattr(module, "lora_B", None)
            if lora_b is not None and name in lora_b:
                lora_b[name].register_forward_hook(router.gate_hook(name))
        return router

    def _saved_extras(self, session: _Session, name: str) -> dict:
        return {"keys": session.router.keys[name].detach().cpu().clone()}

    def _load_extras(self, model, adapter, session: _Session, name: str, saved: dict, hp: MeloHparams) -> None:
        self._attach(model, adapter, session, name, hp).keys[name] = saved["keys"].to(model_device(model))

    def _replay_layer(self, hp: MeloHparams) -> int:
        return min(hp.router_layer, *hp.layers)  # the router's hook on its block must still run

    @torch.no_grad()
    def _keys(self, model, tok, router: Router, requests) -> torch.Tensor:
        batch = request_batch(tok, requests, model_device(model))
        prompt_only = batch.attention_mask * (torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)[None]
                                              < batch.prompt_lens[:, None])
        keys = []
        for mask in (prompt_only, batch.attention_mask):
            model(input_ids=batch.input_ids, attention_mask=mask)
            keys.append(router.last_keys)
        return torch.cat(keys)

    def _forget(self, session: _Session, name: str) -> None:
        if session.router is None:
            return
        session.router.keys.pop(name, None)
        session.router.gates.pop(name, None)
        if len(session.adapters) == 1:  # the last adapter goes: the router goes with it
            session.router.close()
            session.router = None
