"""WISE (Wang et al. 2024): a side memory next to one MLP output projection, with a learned router.

Side memory. A side memory is a copy W' of the output projection W of `layer` (down_proj of a
mid-to-late layer). We store it as the difference Δ = W' - W (so W' x = W x + Δ x, exactly the
same function, without a second full copy of W per memory). The base weight is never written.

Routing. For an activation a (the projection's input at one position) the activation score is
‖(W' - W) a‖ = ‖Δ a‖. WISE routes a *query*: the side memory answers if the query activates it
above the memory's threshold ε. Our causal reading (documented): position t uses W' iff the
running maximum of the score over positions 0..t (padding excluded) exceeds ε, so an edit
prompt switches to the side memory from its most edit-like token (typically the subject) on,
and generated tokens inherit the prompt's decision. Training and teacher-forced scoring see the
same rule. In KV-cached generation the decision made on the prompt is kept for the generated
tokens (a call with tokens already in the KV cache is a decoding step): the query is what the
user wrote, and a generated '?' after an unrelated question was seen to open the memory. With
several side memories (retrieve mode) the newest memory whose running score exceeds its own ε
is used: a memory is trained to stay silent on the prompts of the memories before it, but an older
memory never saw newer prompts (measured on 10 ZsRE edits in 3 memories: taking the memory most
above its own ε sent 2 of the 10 edit prompts to an older memory; the newest firing one sent none:
`PYTHONPATH=. python scripts/wise_routing.py 10 '{"replay": true, "merge": "linear"}'`).

Editing. Each `apply` is one *shard*: its requests train the current side memory through a random
gradient mask that keeps a fraction `mask_ratio` (ρ) of the entries, starting from the memory as
merged so far. Loss = teacher-forced CE on the target tokens (side output used at the last prompt
token and the target positions) + `act_weight` × margin losses on the activation scores:
    ReLU(s_irr - α) + ReLU(β - s_edit) + ReLU(γ - (min s_edit - max s_irr))
where s_edit is each edit row's highest score over its prompt tokens (its running maximum where the
first target token is predicted) and s_irr the score at every position of irrelevant texts (a
query routes if any of its positions does): a built-in set of generic sentences plus the NQ
questions and answers of the first `irrelevant_records` ZsRE *train* records (as WISE trains on
held-out locality data; never the requests' own locality prompts, which are what the evaluation
scores), and in retrieve mode the prompts of the edits held by the other side memories, so that a
query picks its own memory. Each step scores a random `irrelevant_sample` of those positions.
With `replay` (our addition, on by default for the packaged models) the shard
trains together with the earlier edits of its side memory (their CE and edit margins), since a new
shard otherwise overwrites them (measured in lmedit/hparams/wise/default.yaml).
After a shard is trained, its delta δ (masked) is stored and the memory is re-merged from all of
its shards (`merge`: 'ties' = TIES merging: trim to the top `ties_density` magnitudes, elect the
sign by total mass, disjoint mean; 'linear' = the sum of the shard deltas: each shard is trained
as an increment on top of the memory merged so far, so adding the increments keeps every shard
whole, where a plain average would shrink each to 1/k). The threshold ε
is then learned from data: the midpoint between the highest irrelevant score and the lowest
edit score under the merged memory.

Retrieve mode: once a memory holds `shards_per_memory` shards, the next shard opens a new side
memory (a fresh copy of W) and routing picks the most activated memory.

Removal: deleting a shard re-merges its memory from the remaining shard deltas (and re-learns ε);
a memory with no shard left is dropped, and with none left the wrapper is uninstalled (the
original module object is put back).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..hparams import HParams
from ..models.hooks import forward_until
from ..requests import EditRequest
from ..tokens import encode_prompt, target_text
from ._memory import (ForwardingWrapper, frozen, model_device, request_batch, swap_module, target_logits,
                      target_nll)
from .base import EditFailed, EditHandle, EditMethod
from .registry import register

log = logging.getLogger(__name__)

IRRELEVANT_TEXTS = (
    "The weather today is sunny with a light breeze from the west.",
    "She opened the book and began to read the first chapter aloud.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The committee will meet again next Tuesday to discuss the budget.",
    "He plays the guitar in a small band on weekends.",
    "Photosynthesis converts sunlight into chemical energy in plants.",
    "The train to the airport leaves every fifteen minutes.",
    "Mathematics is the study of numbers, shapes and patterns.",
    # questions too: edit prompts are often questions, and a generated '?' must not open the side memory
    "What time does the museum open on Sundays?",
    "How many legs does a spider have?",
    "Who painted the ceiling of the chapel?",
    "Which river flows through the capital city?",
    "Where did you leave the keys this morning?",
    "When does the next bus to the station leave?",
    "Why is the sky blue on a clear day?",
    "What is the boiling point of water?",
    "Is it going to rain tomorrow?",
    "What language do they speak in that country?",
    "Who won the match last night?",
    "How far is the moon from the earth?",
)


@dataclass
class WiseHparams(HParams):
    layer: int = field(default=22, metadata={"help": "layer whose MLP output projection gets the side memory"})
    lr: float = field(default=0.1, metadata={"help": "Adam learning rate for the side memory"})
    num_steps: int = field(default=30, metadata={"help": "optimisation steps per shard (apply call)"})
    mask_ratio: float = field(default=0.2, metadata={"help": "ρ: fraction of the side memory's entries one shard may change"})
    merge: str = field(default="ties", metadata={"help": "'ties' or 'linear' (sum of the shards' increments)"})
    ties_density: float = field(default=0.8, metadata={"help": "TIES: fraction of each shard delta's largest magnitudes kept"})
    shards_per_memory: int = field(default=4, metadata={"help": "retrieve mode: shards per side memory before a new one opens; 0 = one memory"})
    act_weight: float = field(default=1.0, metadata={"help": "weight of the activation-margin losses"})
    alpha: float = field(default=2.0, metadata={"help": "margin: irrelevant positions should score below α"})
    beta: float = field(default=10.0, metadata={"help": "margin: edit positions should score above β"})
    gamma: float = field(default=50.0, metadata={"help": "margin: min edit score - max irrelevant score should exceed γ"})
    stop_loss: float = field(default=0.02, metadata={"help": "stop once the target NLL is below this and the margins are met"})
    irrelevant_records: int = field(default=100, metadata={"help": "ZsRE-train NQ questions (+ answers) added to the built-in irrelevant texts; 0 = built-in only"})
    irrelevant_sample: int = field(default=256, metadata={"help": "irrelevant positions scored per optimisation step (all are used for the threshold)"})
    seed: int = field(default=0, metadata={"help": "seed of the gradient masks"})
    replay: bool = field(default=False, metadata={"help": "train a new shard together with the earlier edits of its side memory"})

    def validate(self):
        self.check(self.lr > 0, "lr must be > 0")
        self.check(self.num_steps >= 1, "num_steps must be >= 1")
        self.check(0 < self.mask_ratio <= 1, "mask_ratio must be in (0, 1]")
        self.check(self.merge in ("ties", "linear"), "merge must be 'ties' or 'linear'")
        self.check(0 < self.ties_density <= 1, "ties_density must be in (0, 1]")
        self.check(self.shards_per_memory >= 0, "shards_per_memory must be >= 0")
        self.check(self.act_weight >= 0, "act_weight must be >= 0")
        self.check(0 <= self.alpha < self.beta, "need 0 <= alpha < beta")
        self.check(self.gamma >= 0, "gamma must be >= 0")
        self.check(self.irrelevant_records >= 0, "irrelevant_records must be >= 0")
        self.check(self.irrelevant_sample >= 1, "irrelevant_sample must be >= 1")


def ties_merge(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean."""
    trimmed = []
    for d in deltas:
        nz = d.abs().flatten()
        k = int(round(density * int((nz > 0).sum())))
        if k <= 0:
            trimmed.append(torch.zeros_like(d))
            continue
        thresh = nz.kthvalue(nz.numel() - k + 1).values
        trimmed.append(torch.where(d.abs() >= thresh, d, torch.zeros_like(d)))
    stack = torch.stack(trimmed)
    sign = torch.sign(stack.sum(0))
    agree = (torch.sign(stack) == sign) & (stack != 0)
    count = agree.sum(0).clamp(min=1)
    return (stack * agree).sum(0) / count


@dataclass
class _Shard:
    id: int
    delta: torch.Tensor  # (out, in), zero outside its mask
    edit_acts: torch.Tensor  # (N, in) activations at the prompt tokens of the shard's edit rows
    edit_rows: torch.Tensor  # (N,) which edit row each activation belongs to (0..rows-1)
    requests: list[EditRequest] = field(default_factory=list)  # what it edited (replayed by later shards)
    mask_seed: int | None = None  # seed of its gradient mask (saved runs store the delta's values under it)
    mask_ratio: float = 0.0


@dataclass
class _Memory:
    shards: list[_Shard] = field(default_factory=list)
    delta: torch.Tensor | None = None  # merged W' - W, (out, in)
    eps: float = 0.0
    stats: tuple[float, float] = (0.0, 0.0)  # (lowest edit score, highest irrelevant score) under the merged memory


def merged_delta(shards: Sequence[_Shard], merge: str, density: float) -> torch.Tensor:
    """A side memory's delta from its shards: TIES, or the sum of their increments ('linear')."""
    deltas = [sh.delta for sh in shards]
    return ties_merge(deltas, density) if merge == "ties" and len(deltas) > 1 else torch.stack(deltas).sum(0)


def gradient_mask(shape, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """The random entries (bool, on the CPU) one shard may change; the same for the same generator state."""
    return torch.rand(shape, generator=gen) < ratio


def row_max(scores: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(n_rows,) highest score of each row, from flat scores and their row ids."""
    return scores.new_full((n_rows,), float("-inf")).scatter_reduce(0, rows, scores, "amax")


class WiseMemory(ForwardingWrapper):
    """Wraps the projection; routes each query to main memory or the most activated side memory."""

    def __init__(self, base: nn.Module, path: str, irr_acts: torch.Tensor):
        super().__init__(base)
        self.path = path
        self.memories: list[_Memory] = []
        self.irr_acts = irr_acts  # (N, in) activations of the built-in irrelevant texts
        self._ids = itertools.count()
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None  # (delta (out,in), position mask (B,T))
        self._attention_mask: torch.Tensor | None = None  # of the model call in progress (set by a pre-hook)
        self._past_len = 0  # tokens already in the KV cache at that call
        self._running: torch.Tensor | None = None  # (M, B) running max score at the end of the last call
        self.hook = None

    def note_call(self, _model, args, kwargs) -> None:
        self._attention_mask = kwargs.get("attention_mask")
        past = kwargs.get("past_key_values")
        self._past_len = int(past.get_seq_length()) if hasattr(past, "get_seq_length") else 0

    def scores(self, delta: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        return (acts.to(delta.dtype) @ delta.T).norm(dim=-1)

    def forward(self, x, *args, **kwargs):
        out = self.base(x, *args, **kwargs)
        if self._train is not None:
            delta, pos = self._train
            return out + (x @ delta.T.to(x.dtype)) * pos.unsqueeze(-1).to(out.dtype)
        if not self.memories:
            return out
        side = torch.stack([x @ m.delta.T.to(x.dtype) for m in self.memories])  # (M, B, T, out)
        s = side.norm(dim=-1)  # (M, B, T)
        T, mask, prev = x.shape[1], self._attention_mask, self._running
        decoding = self._past_len > 0 or (mask is not None and mask.dim() == 2 and mask.shape[-1] > T)
        if decoding and prev is not None and prev.shape == s.shape[:2]:
            running = prev[..., None].expand_as(s)  # generated tokens keep the query's decision
        else:
            if mask is not None and mask.dim() == 2 and mask.shape == s.shape[1:]:
                s = s * mask.to(s.dtype)  # padding never routes
            running = s.cummax(-1).values
        self._running = running[..., -1].detach()
        eps = torch.tensor([m.eps for m in self.memories], dtype=s.dtype, device=s.device).view(-1, 1, 1)
        fires = running > eps  # (M, B, T)
        # the newest memory that fires answers: each memory was trained to stay below its ε on the prompts
        # of the memories before it (they are among its irrelevant texts), while an older memory never saw
        # the prompts of newer ones and may fire on them too
        order = torch.arange(1, len(self.memories) + 1, device=s.device).view(-1, 1, 1)
        best, idx = (fires * order).max(0)  # (B, T): best = 0 where none fires
        chosen = side.gather(0, idx[None, ..., None].expand(1, *side.shape[1:]))[0]
        return out + chosen * (best > 0).unsqueeze(-1).to(out.dtype)

    def irrelevant_for(self, mem: _Memory) -> torch.Tensor:
        """What `mem` must not answer: the irrelevant texts and the prompts edited into other memories."""
        others = [sh.edit_acts for m in self.memories if m is not mem for sh in m.shards]
        return torch.cat([self.irr_acts, *others])

    def edit_scores(self, delta: torch.Tensor, shards: Sequence[_Shard]) -> torch.Tensor:
        """Each edit row's highest prompt-token score under `delta`."""
        out = []
        for sh in shards:
            out.append(row_max(self.scores(delta, sh.edit_acts), sh.edit_rows, int(sh.edit_rows.max()) + 1))
        return torch.cat(out)

    def remerge(self, mem: _Memory, hp_merge: str, density: float) -> None:
        mem.delta = merged_delta(mem.shards, hp_merge, density)
        edit = self.edit_scores(mem.delta, mem.shards)
        irr = self.scores(mem.delta, self.irrelevant_for(mem))
        mem.eps = float((edit.min() + irr.max()) / 2)
        mem.stats = (float(edit.min()), float(irr.max()))
        if mem.stats[0] <= mem.stats[1]:  # ε falls between them: the weakest edits stay below it
            log.warning("wise: side memory at %s does not separate its edits from irrelevant text (lowest edit "
                        "score %.3g <= highest irrelevant score %.3g): its weakest edits will not reach it; "
                        "more num_steps or another layer may help", self.path, *mem.stats)

    def extra_repr(self) -> str:
        return f"memories={len(self.memories)}, shards={[len(m.shards) for m in self.memories]}"


class WiseHandle(EditHandle):
    def __init__(self, method: "Wise", model, wrapper: WiseMemory, shard_id: int | None, merge: str, density: float):
        self.method, self.model, self.wrapper, self.shard_id = method, model, wrapper, shard_id
        self.merge, self.density = merge, density
        self.restored = False

    def restore(self) -> None:
        if self.restored:
            return
        w = self.wrapper
        for mem in list(w.memories):
            kept = [s for s in mem.shards if s.id != self.shard_id]
            if len(kept) != len(mem.shards):
                mem.shards = kept
                if kept:
                    w.remerge(mem, self.merge, self.density)
            if not mem.shards:  # also a memory opened for a shard whose training failed
                w.memories.remove(mem)
        if not w.memories and self.model.get_submodule(w.path) is w:
            swap_module(self.model, w.path, w.base)
            w.hook.remove()
        self.restored = True


def irrelevant_texts(records: int) -> list[str]:
    """The built-in sentences plus the NQ question + answer of the first `records` ZsRE train records."""
    texts = list(IRRELEVANT_TEXTS)
    if records:
        from ..data import load_dataset

        for r in load_dataset("zsre-mend-train", limit=records, skip_invalid=True):
            texts += [pa.prompt + target_text(pa.prompt, pa.answer) for pa in r.locality[:1]]
    return texts


def _acts(model, tok, module: nn.Module, texts: Sequence[str], device) -> list[torch.Tensor]:
    """The module's input (T, in) for each text."""
    out = []

    def grab(_m, inputs, _o):
        out.append(inputs[0].detach()[0].float())

    h = module.register_forward_hook(grab)
    try:
        with torch.no_grad():
            for t in texts:
                ids = torch.tensor([encode_prompt(tok, t)], device=device)
                forward_until(model, [module], input_ids=ids)
    finally:
        h.remove()
    return out


@register
class Wise(EditMethod):
    name = "wise"
    hparams_cls = WiseHparams
    edits_weights = False

    def _wrapper(self, model, tok, path: str, hp: WiseHparams) -> WiseMemory:
        """The side memories at `path`: the installed wrapper, or a new one (with the irrelevant texts' activations)."""
        mod = model.get_submodule(path)
        if isinstance(mod, WiseMemory):
            return mod
        irr = torch.cat(_acts(model, tok, mod, irrelevant_texts(hp.irrelevant_records), model_device(model)))
        wrapper = WiseMemory(mod, path, irr)
        swap_module(model, path, wrapper)
        wrapper.hook = model.register_forward_pre_hook(wrapper.note_call, with_kwargs=True)
        return wrapper

    def resume_state(self, model) -> dict:
        """Every side memory: its threshold and its shards. A shard's delta is stored as its values on its
        gradient mask (regenerated from the mask seed on loading, a fifth of the dense size); merged
        deltas are recomputed, thresholds kept as they were learned."""
        out = []
        for w in model.modules():
            if not isinstance(w, WiseMemory) or not w.memories:
                continue
            mems = []
            for mem in w.memories:
                shards = []
                for sh in mem.shards:
                    mask = gradient_mask(sh.delta.shape, sh.mask_ratio, torch.Generator().manual_seed(sh.mask_seed))
                    shards.append({"id": sh.id, "mask_seed": sh.mask_seed, "mask_ratio": sh.mask_ratio,
                                   "shape": list(sh.delta.shape), "values": sh.delta.cpu()[mask],
                                   "edit_acts": sh.edit_acts.cpu(), "edit_rows": sh.edit_rows.cpu(),
                                   "requests": [r.to_dict() for r in sh.requests]})
                mems.append({"eps": mem.eps, "stats": list(mem.stats), "shards": shards})
            out.append({"path": w.path, "memories": mems})
        return {"wrappers": out}

    def load_resume_state(self, model, tok, hparams: WiseHparams, state: dict) -> None:
        device = model_device(model)
        for saved in state["wrappers"]:
            w = self._wrapper(model, tok, saved["path"], hparams)
            for m in saved["memories"]:
                shards = []
                for sh in m["shards"]:
                    mask = gradient_mask(tuple(sh["shape"]), sh["mask_ratio"], torch.Generator().manual_seed(sh["mask_seed"]))
                    delta = torch.zeros(mask.shape, dtype=sh["values"].dtype)
                    delta[mask] = sh["values"]
                    shards.append(_Shard(sh["id"], delta.to(device), sh["edit_acts"].to(device), sh["edit_rows"].to(device),
                                         [EditRequest.from_dict(r) for r in sh["requests"]], sh["mask_seed"], sh["mask_ratio"]))
                w.memories.append(_Memory(shards, merged_delta(shards, hparams.merge, hparams.ties_density),
                                          m["eps"], tuple(m["stats"])))
            w._ids = itertools.count(1 + max((sh.id for m in w.memories for sh in m.shards), default=-1))

    def apply(self, model, tok, adapter, requests: Sequence[EditRequest], hp: WiseHparams) -> WiseHandle:
        wrapper = self._wrapper(model, tok, adapter.mlp_out_path(hp.layer), hp)
        handle = WiseHandle(self, model, wrapper, None, hp.merge, hp.ties_density)
        try:
            self._edit(model, tok, adapter, wrapper, requests, hp, handle)
        except BaseException:
            handle.restore()
            raise
        return handle

    def _edit(self, model, tok, adapter, wrapper: WiseMemory, requests, hp: WiseHparams, handle: WiseHandle):
        device = model_device(model)
        if not wrapper.memories or (hp.shards_per_memory and len(wrapper.memories[-1].shards) >= hp.shards_per_memory):
            wrapper.memories.append(_Memory())
        mem = wrapper.memories[-1]
        # replay: the memory's earlier edits train along, so the new shard does not overwrite them
        old = [r for sh in mem.shards for r in sh.requests] if hp.replay else []
        train = old + list(requests)
        batch = request_batch(tok, train, device)
        T = batch.input_ids.shape[1]
        ar = torch.arange(T, device=device)
        lens = batch.attention_mask.sum(1)
        pos = (ar[None] >= (batch.prompt_lens - 1)[:, None]) & (ar[None] < lens[:, None])  # trained positions
        prompt_pos = ar[None] < batch.prompt_lens[:, None]
        # activations at the projection input do not depend on the side memory: compute them once
        acts = {}

        def grab(_m, inputs, _o):
            acts["x"] = inputs[0].detach().float()

        h = wrapper.base.register_forward_hook(grab)
        try:
            with torch.no_grad():
                forward_until(model, [wrapper.base], input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        finally:
            h.remove()
        train_acts = acts["x"][prompt_pos]  # (N, in)
        train_rows = torch.arange(len(train), device=device)[:, None].expand(-1, T)[prompt_pos]
        is_new = train_rows >= len(old)
        edit_acts, edit_rows = train_acts[is_new], train_rows[is_new] - len(old)

        irr_acts = wrapper.irrelevant_for(mem)
        W = adapter.as_out_in(wrapper.base.weight).detach()
        start = mem.delta if mem.delta is not None else torch.zeros_like(W, dtype=torch.float32)
        mask_seed = hp.seed + len(mem.shards) + 7919 * len(wrapper.memories)
        gen = torch.Generator().manual_seed(mask_seed)
        mask = gradient_mask(W.shape, hp.mask_ratio, gen).to(device=device, dtype=torch.float32)
        n_irr = min(hp.irrelevant_sample, len(irr_acts))
        p = nn.Parameter(torch.zeros_like(start))
        opt = torch.optim.Adam([p], lr=hp.lr)
        with frozen(model), adapter.replay_below(hp.layer, input_ids=batch.input_ids,
                                                  attention_mask=batch.attention_mask):
            try:  # nothing below the side memory's layer changes while it is trained
                for _ in range(hp.num_steps):
                    opt.zero_grad()
                    delta = start + mask * p
                    wrapper._train = (delta, pos)
                    logits, first = target_logits(model, batch)
                    wrapper._train = None
                    ce = target_nll(logits, batch, first).mean()
                    s_edit = row_max(wrapper.scores(delta, train_acts), train_rows, len(train))
                    rows = torch.randperm(len(irr_acts), generator=gen)[:n_irr].to(device)
                    s_irr = wrapper.scores(delta, irr_acts[rows])
                    margin = (torch.relu(s_irr - hp.alpha).mean() + torch.relu(hp.beta - s_edit).mean()
                              + torch.relu(hp.gamma - (s_edit.min() - s_irr.max())))
                    loss = ce + hp.act_weight * margin
                    if ce.item() < hp.stop_loss and margin.item() == 0:
                        break
                    loss.backward()
                    opt.step()
            finally:
                wrapper._train = None
        shard_delta = (mask * p).detach()
        if not torch.isfinite(shard_delta).all():
            raise EditFailed("wise produced a non-finite side memory; the model was restored")
        shard = _Shard(next(wrapper._ids), shard_delta, edit_acts, edit_rows, list(requests), mask_seed, hp.mask_ratio)
        mem.shards.append(shard)
        handle.shard_id = shard.id
        wrapper.remerge(mem, hp.merge, hp.ties_density)
