"""GRACE (Hartvigsen et al. 2023, "Aging with GRACE"): a discrete key-value codebook at one layer.

The MLP output projection of `layer` is wrapped by a `GraceAdaptor` (installed on the first edit,
removed - the original module object put back - when the last edit is undone). The base weights
are never touched.

Codebook entries are (key, value, radius ε, label):
  key    the projection's *input* (the layer's MLP hidden activation) at the last prompt token
  value  a vector of the projection's output size, trained so that, written at that position,
         the model predicts target_new (teacher-forced CE on the target tokens, `num_steps` Adam steps)
  label  target_new (string) - decides expand vs split

Inference (our choice, documented): matching is *per position*. For every token position the
query is the projection's input there; if its nearest key is within that key's radius
(distance <= ε), the projection's output at that position is replaced by the key's value.
Training writes the value at the last prompt token only, so training and inference agree, and
generation with a KV cache works (the prompt's last position is matched when the prompt is
processed; later tokens attend to it).

Codebook maintenance when a new edit arrives (paper, Sec. 3): let i* be the nearest existing key
at distance d.
  d > ε_i* + ε_init                 add a new entry (key, value, ε_init, label)
  overlap, same label   (expand)    no new entry; ε_i* <- max(ε_i*, d) so it covers the new key
  overlap, other label  (split)     add the new entry; both radii <- d / 2 (never grown by a split)
Per-edit removal: every edit keeps its own (key, trained value, label) record; the codebook is a
deterministic replay of the surviving records in edit order, so removing edit #2 of 3 gives
exactly the codebook edits #1 and #3 would have built (their trained values are kept, not retrained).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..hparams import HParams
from ..models.hooks import forward_until
from ..requests import EditRequest
from ._memory import (ForwardingWrapper, fit_targets, frozen, model_device, prompt_last_positions, request_batch,
                      swap_module)
from .base import EditFailed, EditHandle, EditMethod
from .registry import register


@dataclass
class GraceHparams(HParams):
    layer: int = field(default=20, metadata={"help": "layer whose MLP output projection carries the codebook"})
    eps_init: float = field(default=3.0, metadata={"help": "initial deferral radius of a new key (L2, in the projection's input space)"})
    lr: float = field(default=2.0, metadata={"help": "Adam learning rate for the value vectors"})
    num_steps: int = field(default=40, metadata={"help": "optimisation steps per edit"})
    stop_loss: float = field(default=0.1, metadata={"help": "stop early once the mean target NLL is below this"})
    value_init: str = field(default="output", metadata={"help": "'output' (the layer's original output at the key) or 'zeros'"})

    def validate(self):
        self.check(self.eps_init > 0, "eps_init must be > 0")
        self.check(self.lr > 0, "lr must be > 0")
        self.check(self.num_steps >= 1, "num_steps must be >= 1")
        self.check(self.stop_loss >= 0, "stop_loss must be >= 0")
        self.check(self.value_init in ("output", "zeros"), "value_init must be 'output' or 'zeros'")


@dataclass
class _Record:
    """What one edit contributed: its key, trained value, label and initial radius."""
    key: torch.Tensor
    value: torch.Tensor
    label: str
    eps_init: float


@dataclass
class _Entry:
    key: torch.Tensor
    value: torch.Tensor
    eps: float
    label: str
    members: list[int] = field(default_factory=list)  # edit ids that built / expanded this entry


class GraceAdaptor(ForwardingWrapper):
    """Wraps a projection; replaces its output where the input falls inside a codebook key's radius."""

    def __init__(self, base: nn.Module, path: str):
        super().__init__(base)
        self.path = path
        self.records: dict[int, _Record] = {}  # edit id -> record, in edit order
        self.entries: list[_Entry] = []
        self._ids = itertools.count()
        self._keys = self._values = self._eps = None
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None  # (positions (B,), values (B, D))

    # --- codebook ------------------------------------------------------------------------
    def add(self, rec: _Record) -> int:
        i = next(self._ids)
        self.records[i] = rec
        self._place(i, rec, self.entries)  # the replay of the records so far, one step further
        self._stack()
        return i

    def remove(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.records.pop(i, None)
        self._rebuild()

    def _rebuild(self) -> None:
        entries: list[_Entry] = []
        for i, rec in self.records.items():
            self._place(i, rec, entries)
        self.entries = entries
        self._stack()

    @staticmethod
    def _place(i: int, rec: _Record, entries: list[_Entry]) -> None:
        """Apply one record to the codebook: expand, split or add (see the module docstring)."""
        if entries:
            d = torch.linalg.vector_norm(torch.stack([e.key for e in entries]) - rec.key, dim=-1)
            j = int(d.argmin())
            dj = float(d[j])
            near = entries[j]
            if dj <= near.eps + rec.eps_init:
                if rec.label == near.label:  # expand
                    near.eps = max(near.eps, dj)
                    near.members.append(i)
                    return
                near.eps = min(near.eps, dj / 2)  # split
                entries.append(_Entry(rec.key, rec.value, min(rec.eps_init, dj / 2), rec.label, [i]))
                return
        entries.append(_Entry(rec.key, rec.value, rec.eps_init, rec.label, [i]))

    def _stack(self) -> None:
        if self.entries:
            self._keys = torch.stack([e.key for e in self.entries])
            self._values = torch.stack([e.value for e in self.entries])
            self._eps = torch.tensor([e.eps for e in self.entries], dtype=self._keys.dtype, device=self._keys.device)
        else:
            self._keys = self._values = self._eps = None

    def match(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For inputs (..., D_in): (hit mask (...), index of the nearest key (...))."""
        flat = x.reshape(-1, x.shape[-1]).to(self._keys.dtype)
        d = torch.cdist(flat, self._keys)  # (N, K)
        dmin, idx = d.min(-1)
        hit = dmin <= self._eps[idx]
        return hit.reshape(x.shape[:-1]), idx.reshape(x.shape[:-1])

    # --- forward -------------------------------------------------------------------------
    def forward(self, x, *args, **kwargs):
        out = self.base(x, *args, **kwargs)
        if self._keys is not None:
            hit, idx = self.match(x.detach())
            if hit.any():
                out = torch.where(hit.unsqueeze(-1), self._values[idx].to(out.dtype), out)
        if self._train is not None:
            pos, vals = self._train
            rows = torch.arange(out.shape[0], device=out.device)
            out = out.clone()
            out[rows, pos] = vals.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"edits={len(self.records)}, entries={len(self.entries)}"


class GraceHandle(EditHandle):
    def __init__(self, method: "Grace", model: nn.Module, adaptor: GraceAdaptor, ids: list[int]):
        self.method, self.model, self.adaptor, self.ids = method, model, adaptor, ids
        self.restored = False

    def restore(self) -> None:
        if self.restored:
            return
        self.adaptor.remove(self.ids)
        if not self.adaptor.records:
            self.method.uninstall(self.model, self.adaptor)
        self.restored = True


@register
class Grace(EditMethod):
    name = "grace"
    hparams_cls = GraceHparams
    edits_weights = False

    def install(self, model: nn.Module, path: str) -> GraceAdaptor:
        mod = model.get_submodule(path)
        if isinstance(mod, GraceAdaptor):
            return mod
        adaptor = GraceAdaptor(mod, path)
        swap_module(model, path, adaptor)
        return adaptor

    def uninstall(self, model: nn.Module, adaptor: GraceAdaptor) -> None:
        if model.get_submodule(adaptor.path) is adaptor:
            swap_module(model, adaptor.path, adaptor.base)

    def resume_state(self, model) -> dict:
        """Every codebook's per-edit records, in edit order (the codebook is their replay)."""
        return {"codebooks": [
            {"path": m.path, "records": [{"key": r.key, "value": r.value, "label": r.label, "eps_init": r.eps_init}
                                         for r in m.records.values()]}
            for m in model.modules() if isinstance(m, GraceAdaptor) and m.records]}

    def load_resume_state(self, model, tok, hparams, state: dict) -> None:
        for book in state["codebooks"]:
            adaptor = self.install(model, book["path"])
            for r in book["records"]:
                adaptor.add(_Record(r["key"], r["value"], r["label"], r["eps_init"]))

    def apply(self, model, tok, adapter, requests: Sequence[EditRequest], hp: GraceHparams) -> GraceHandle:
        path = adapter.mlp_out_path(hp.layer)
        adaptor = self.install(model, path)
        handle = GraceHandle(self, model, adaptor, [])
        try:
            keys, values = self._train_values(model, tok, adapter, adaptor, requests, hp)
            if not torch.isfinite(values).all():
                raise EditFailed("grace produced non-finite values; the model was restored")
            for r, k, v in zip(requests, keys, values):
                handle.ids.append(adaptor.add(_Record(k, v, r.target_new, hp.eps_init)))
        except BaseException:
            handle.restore()
            raise
        return handle

    def _train_values(self, model, tok, adapter, adaptor: GraceAdaptor, requests, hp: GraceHparams):
        batch = request_batch(tok, requests, model_device(model))
        pos = prompt_last_positions(batch)
        rows = torch.arange(len(requests))
        captured = {}

        def grab(_m, inputs, output):
            captured["x"], captured["y"] = inputs[0].detach(), output.detach()

        h = adaptor.base.register_forward_hook(grab)
        try:
            with torch.no_grad():
                forward_until(model, [adaptor.path], input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        finally:
            h.remove()
        keys = captured["x"][rows, pos].float().clone()
        init = captured["y"][rows, pos].float().clone() if hp.value_init == "output" else \
            torch.zeros_like(captured["y"][rows, pos], dtype=torch.float32)
        values = nn.Parameter(init)
        with frozen(model), adapter.replay_below(hp.layer, input_ids=batch.input_ids,
                                                  attention_mask=batch.attention_mask):
            try:  # the blocks below the codebook's layer do not change while the value is trained
                adaptor._train = (pos, values)
                fit_targets(model, batch, [values], hp.lr, hp.num_steps, hp.stop_loss)
            finally:
                adaptor._train = None
        return keys, values.detach().clone()
