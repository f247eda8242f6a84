"""LoRA editing, MELO-style (Yu et al. 2024): every edit gets its *own* named peft LoRA adapter.

Each `apply` (one request, or one batch of requests) trains a fresh adapter `edit-<n>` on the MLP
projections of `layers` with teacher-forced cross-entropy on the target tokens (prompt masked),
while the adapters of earlier edits stay active and frozen. All adapters are active at inference,
so sequential edits accumulate.

The first edit wraps the model with `peft.get_peft_model` (peft injects LoRA layers into the
model object in place, so the caller's model runs them); later edits `add_adapter`. Restoring an
edit deletes its adapter (`delete_adapter`) and re-activates the others; restoring the last one
`unload()`s peft, which puts the original Linear modules back: the module tree, the state_dict
(bit-identical: base weights are never written) and every `requires_grad` flag are as before.

`lora` keeps every adapter active, so its locality is that of plain LoRA fine-tuning; `melo`
(lmedit/methods/melo.py) adds MELO's router, which activates an adapter only for inputs near its
edit.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..hparams import HParams
from ..models.adapters import ModelAdapter
from ..requests import EditRequest
from ._memory import fit_targets, model_device, request_batch
from .base import EditFailed, EditHandle, EditMethod
from .registry import register


@dataclass
class LoraHparams(HParams):
    layers: list[int] = field(default_factory=lambda: [12, 13, 14, 15], metadata={"help": "layers whose MLP projections get LoRA"})
    targets: str = field(default="mlp_out", metadata={"help": "'mlp_out' (output projection) or 'mlp' (input and output projections)"})
    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha (scale = alpha / r)"})
    lr: float = field(default=5e-3, metadata={"help": "Adam learning rate"})
    num_steps: int = field(default=30, metadata={"help": "optimisation steps per edit"})
    stop_loss: float = field(default=0.02, metadata={"help": "stop early once the mean target NLL is below this"})
    seed: int = field(default=0, metadata={"help": "seed for the LoRA A-matrix initialisation"})

    def validate(self):
        self.check(len(self.layers) > 0, "layers must list at least one layer")
        self.check(self.targets in ("mlp_out", "mlp"), "targets must be 'mlp_out' or 'mlp'")
        self.check(self.rank >= 1, "rank must be >= 1")
        self.check(self.alpha > 0, "alpha must be > 0")
        self.check(self.lr > 0, "lr must be > 0")
        self.check(self.num_steps >= 1, "num_steps must be >= 1")


class _Session:
    """peft state of one model while it carries at least one edit adapter."""

    def __init__(self, model: nn.Module, peft_model, flags: dict[str, bool]):
        self.model, self.peft_model, self.flags = model, peft_model, flags
        self.adapters: list[str] = []
        self.router = None  # MELO: the router that gates adapters per input

    def activate_all(self) -> None:
        self.peft_model.base_model.set_adapter(list(self.adapters))
        self.reset_grad_flags()

    def reset_grad_flags(self) -> None:
        """Base parameters get their own flags back; adapter parameters are frozen."""
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.flags.get(n, False))


class LoraHandle(EditHandle):
    def __init__(self, method: "Lora", session: _Session, name: str):
        self.method, self.session, self.name = method, session, name
        self.restored = False

    def restore(self) -> None:
        if not self.restored:
            self.method.remove(self.session, self.name)
            self.restored = True


@register
class Lora(EditMethod):
    name = "lora"
    hparams_cls = LoraHparams
    edits_weights = False

    def __init__(self):
        self._sessions: dict[int, _Session] = {}
        self._names = itertools.count()

    def target_modules(self, adapter, hp: LoraHparams) -> list[str]:
        paths = []
        for layer in hp.layers:
            if hp.targets == "mlp":
                paths += adapter.mlp_in_paths(layer)
            paths.append(adapter.mlp_out_path(layer))
        return list(dict.fromkeys(paths))

    def _config(self, adapter, hp: LoraHparams):
        from peft import LoraConfig

        return LoraConfig(r=hp.rank, lora_alpha=hp.alpha, lora_dropout=0.0, bias="none",
                          target_modules=self.target_modules(adapter, hp), init_lora_weights=True)

    def _add(self, model, adapter, hp: LoraHparams, name: str | None = None) -> tuple[_Session, str]:
        """A new adapter on `model` (named `name` when a resumed run brings its adapters back)."""
        from peft import get_peft_model

        if name is None:
            name = f"edit-{next(self._names)}"
        else:  # later edits get new names
            self._names = itertools.count(max(next(self._names), int(name.rsplit("-", 1)[1]) + 1))
        session = self._sessions.get(id(model))
        with torch.random.fork_rng(devices=[]):  # seeded LoRA init without touching the global RNG
            torch.manual_seed(hp.seed)
            if session is None:
                flags = {n: p.requires_grad for n, p in model.named_parameters()}
                peft_model = get_peft_model(model, self._config(adapter, hp), adapter_name=name)
                session = self._sessions[id(model)] = _Session(model, peft_model, flags)
            else:
                session.peft_model.add_adapter(name, self._config(adapter, hp))
        session.adapters.append(name)
        session.activate_all()
        return session, name

    def remove(self, session: _Session, name: str) -> None:
        if name not in session.adapters:
            return
        self._forget(session, name)
        if len(session.adapters) == 1:
            session.peft_model.unload()  # puts the original modules back, drops peft_config
            session.adapters.clear()
            session.reset_grad_flags()
            self._sessions.pop(id(session.model), None)
            return
        session.peft_model.delete_adapter(name)
        session.adapters.remove(name)
        session.activate_all()

    def apply(self, model, tok, adapter, requests: Sequence[EditRequest], hp: LoraHparams) -> LoraHandle:
        session, name = self._add(model, adapter, hp)
        handle = LoraHandle(self, session, name)
        try:
            self._before_training(model, tok, adapter, session, name, requests, hp)
            self._train(model, tok, adapter, session, name, requests, hp)
        except BaseException:
            handle.restore()
            raise
        return handle

    def resume_state(self, model) -> dict:
        """This model's adapters in edit order, each with its LoRA weights (and what a subclass adds)."""
        session = self._sessions.get(id(model))
        if session is None:
            return {"adapters": []}
        return {"adapters": [{"name": name,
                              "weights": {n: p.detach().cpu().clone() for n, p in self._named_adapter_params(model, name)},
                              **self._saved_extras(session, name)}
                             for name in session.adapters]}

    def load_resume_state(self, model, tok, hparams: LoraHparams, state: dict) -> None:
        adapter = ModelAdapter(model)
        loaded: list[tuple[_Session, str]] = []
        try:
            for saved in state["adapters"]:
                session, name = self._add(model, adapter, hparams, name=saved["name"])
                loaded.append((session, name))
                params = dict(self._named_adapter_params(model, name))
                if set(params) != set(saved["weights"]):
                    raise ValueError(f"{self.name}: saved adapter {name} does not fit this model and hparams "
                                     f"(saved {len(saved['weights'])} LoRA tensors, the layers give {len(params)})")
                with torch.no_grad():
                    for n, t in saved["weights"].items():
                        params[n].copy_(t.to(params[n].device, params[n].dtype))
                self._load_extras(model, adapter, session, name, saved, hparams)
                session.reset_grad_flags()
        except BaseException:
            for session, name in reversed(loaded):  # the model goes back to how it was
                self.remove(session, name)
            raise

    def _saved_extras(self, session: _Session, name: str) -> dict:
        """Hook for subclasses: what besides the LoRA weights a resumed run needs of adapter `name`."""
        return {}

    def _load_extras(self, model, adapter, session: _Session, name: str, saved: dict, hp) -> None:
        """Hook for subclasses: put back what `_saved_extras` returned."""

    def _forget(self, session: _Session, name: str) -> None:
        """Hook for subclasses: `name` is about to be deleted (MELO drops its router keys)."""

    def _before_training(self, model, tok, adapter, session: _Session, name: str, requests, hp) -> None:
        """Hook for subclasses (MELO registers the new adapter with its router here)."""

    def _replay_layer(self, hp) -> int:
        """Blocks below this layer are unchanged by training (MELO also needs its router's block)."""
        return min(hp.layers)

    def _train(self, model, tok, adapter, session: _Session, name: str, requests, hp: LoraHparams) -> None:
        params = self.adapter_params(model, name)
        if not params:
            raise EditFailed(f"{self.name}: no LoRA parameters were created for {hp.layers}")
        batch = request_batch(tok, requests, model_device(model))
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        with adapter.replay_below(self._replay_layer(hp), input_ids=batch.input_ids,
                                  attention_mask=batch.attention_mask):
            fit_targets(model, batch, params, hp.lr, hp.num_steps, hp.stop_loss)
        for p in params:
            p.grad = None
        if not all(torch.isfinite(p).all() for p in params):
            raise EditFailed(f"{self.name} produced non-finite adapter weights; the model was restored")
        session.reset_grad_flags()

    @staticmethod
    def _named_adapter_params(model, name: str) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]

    @classmethod
    def adapter_params(cls, model, name: str) -> list[nn.Parameter]:
        return [p for _, p in cls._named_adapter_params(model, name)]
