"""T-Patcher (Huang et al. 2023, "Transformer-Patcher"): a few trainable neurons per edit in one MLP.

A patch neuron has a key k (model width), a bias b and a value v (model width). For the input x of
the MLP of `layer` (the post-norm hidden state at one position) the patched MLP returns

    mlp(x) + Σ_patches relu(x·k + b) · v

so a patch does nothing where its pre-activation a = x·k + b is negative. The base weights are never
written; the patches live in a forward hook on the MLP module (the module tree and state_dict stay
as they were) that is removed when the last edit is undone.

Training an edit (its `n_neurons` neurons per request; earlier patches stay active and frozen):
    loss = CE(target_new | prompt)                                     (teacher-forced, prompt masked)
         + act_weight · mean ReLU(edit_margin − a)   at the edit positions   (the patch must fire)
         + act_weight · mean ReLU(a + memory_margin) at memory positions     (and stay silent elsewhere)
         + act_weight · mean ReLU(a + memory_margin) at earlier edits' positions
Edit positions are the last prompt token and the target positions that predict a further target
token (where the patch has to act). Memory positions are `memory_tokens` tokens of unrelated text,
by default the WikiText-2 corpus of `lmedit.stats` (any local file or folder via `memory_corpus`);
their MLP inputs are computed once per model, layer and corpus. Earlier edits' positions get a
term of their own (a few positions would vanish in the corpus mean): a later patch stays silent
on earlier edits, so undoing it cannot change them. The paper's memory set is drawn from
the task's training data; unrelated encyclopedic text plays that role here, and the evaluation's
locality prompts are never used for training.

Initialisation: k = x̄/‖x̄‖ and b = −init_cos·‖x̄‖ for x̄ the mean edit-position input, so the neuron
starts firing at the edit (a ≈ (1 − init_cos)‖x̄‖) and rarely elsewhere; v = 0, so an untrained
patch changes nothing.

Removal: every edit's neurons are kept under their own id; undoing an edit drops exactly those.
"""
from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..hparams import HParams
from ..requests import EditRequest
from ._memory import frozen, model_device, request_batch, target_nll
from .base import EditFailed, EditHandle, EditMethod
from .registry import register


@dataclass
class TPatcherHparams(HParams):
    layer: int = field(default=-1, metadata={"help": "layer whose MLP gets the patches (the paper: the last one)"})
    n_neurons: int = field(default=1, metadata={"help": "patch neurons per request"})
    lr: float = field(default=0.05, metadata={"help": "Adam learning rate for keys, biases and values"})
    num_steps: int = field(default=60, metadata={"help": "optimisation steps per edit"})
    act_weight: float = field(default=1.0, metadata={"help": "weight of the two activation-margin losses"})
    edit_margin: float = field(default=1.0, metadata={"help": "pre-activation the patch must exceed at edit positions"})
    memory_margin: float = field(default=1.0, metadata={"help": "memory positions must stay below minus this"})
    init_cos: float = field(default=0.8, metadata={"help": "initial bias as a fraction of the edit input's norm"})
    memory_tokens: int = field(default=4096, metadata={"help": "tokens of unrelated text in the memory set"})
    memory_corpus: str | None = field(default=None, metadata={"help": "memory-set text (None: lmedit.stats default corpus)"})
    stop_loss: float = field(default=0.02, metadata={"help": "stop once the target NLL is below this and the margins are met"})

    def validate(self):
        self.check(self.n_neurons >= 1, "n_neurons must be >= 1")
        self.check(self.lr > 0, "lr must be > 0")
        self.check(self.num_steps >= 1, "num_steps must be >= 1")
        self.check(self.act_weight >= 0, "act_weight must be >= 0")
        self.check(self.edit_margin >= 0 and self.memory_margin >= 0, "margins must be >= 0")
        self.check(0 <= self.init_cos < 1, "init_cos must be in [0, 1)")
        self.check(self.memory_tokens >= 1, "memory_tokens must be >= 1")
        self.check(self.stop_loss >= 0, "stop_loss must be >= 0")


@dataclass
class _Patch:
    keys: torch.Tensor  # (n, d)
    bias: torch.Tensor  # (n,)
    values: torch.Tensor  # (n, d)
    inputs: torch.Tensor | None = None  # (N, d) MLP inputs at the edit's positions


class PatchBank:
    """The patches of one MLP module, applied by a forward hook while at least one edit is present."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.patches: dict[int, _Patch] = {}
        self.training: _Patch | None = None  # the patch being trained (parameters with grad)
        self._ids = itertools.count()
        self._hook = module.register_forward_hook(self._forward)
        self._stacked: _Patch | None = None

    def add(self, patch: _Patch) -> int:
        i = next(self._ids)
        self.patches[i] = patch
        self._stacked = None
        return i

    def remove(self, i: int) -> None:
        self.patches.pop(i, None)
        self._stacked = None

    def close(self) -> None:
        self._hook.remove()

    def stacked(self) -> _Patch | None:
        if self._stacked is None and self.patches:
            ps = list(self.patches.values())
            self._stacked = _Patch(torch.cat([p.keys for p in ps]), torch.cat([p.bias for p in ps]),
                                   torch.cat([p.values for p in ps]))
        return self._stacked

    @staticmethod
    def pre_activation(x: torch.Tensor, p: _Patch) -> torch.Tensor:
        return x.float() @ p.keys.T + p.bias

    def _forward(self, _module, inputs, output):
        x = inputs[0]
        extra = None
        for p in (self.stacked(), self.training):
            if p is not None:
                add = torch.relu(self.pre_activation(x, p)) @ p.values
                extra = add if extra is None else extra + add
        return output if extra is None else output + extra.to(output.dtype)


class TPatcherHandle(EditHandle):
    def __init__(self, method: "TPatcher", bank: PatchBank, patch_id: int | None):
        self.method, self.bank, self.patch_id = method, bank, patch_id
        self.restored = False

    def restore(self) -> None:
        if self.restored:
            return
        if self.patch_id is not None:
            self.bank.remove(self.patch_id)
        if not self.bank.patches:
            self.method.close(self.bank)
        self.restored = True


_MEMORY: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def memory_inputs(model, tok, module: nn.Module, n_tokens: int, corpus=None, chunk: int = 128) -> torch.Tensor:
    """(n_tokens, d) inputs of `module` over unrelated text, cached per model, module, size and corpus."""
    from ..stats.corpus import iter_token_chunks

    key = (id(module), n_tokens, str(corpus))
    cache = _MEMORY.setdefault(model, {})
    if key not in cache:
        got: list[torch.Tensor] = []
        h = module.register_forward_hook(lambda _m, inp, _o: got.append(inp[0][0].detach().float()))
        try:
            dev = model_device(model)
            for ids in iter_token_chunks(tok, corpus, max_len=chunk, n_tokens=n_tokens):
                model(input_ids=torch.tensor([ids], device=dev))
        finally:
            h.remove()
        if not got:
            raise ValueError(f"t-patcher: the memory corpus {corpus or '(default)'} gave no tokens")
        cache[key] = torch.cat(got)
    return cache[key]


@register
class TPatcher(EditMethod):
    name = "t-patcher"
    hparams_cls = TPatcherHparams
    edits_weights = False

    def __init__(self):
        self._banks: "weakref.WeakKeyDictionary[nn.Module, PatchBank]" = weakref.WeakKeyDictionary()

    def bank(self, module: nn.Module) -> PatchBank:
        if module not in self._banks:
            self._banks[module] = PatchBank(module)
        return self._banks[module]

    def close(self, bank: PatchBank) -> None:
        bank.close()
        self._banks.pop(bank.module, None)

    def resume_state(self, model) -> dict:
        """Every patch bank of this model (by module path) with its patches, in edit order."""
        paths = {id(m): n for n, m in model.named_modules()}
        return {"banks": [{"path": paths[id(b.module)],
                           "patches": [{"keys": p.keys, "bias": p.bias, "values": p.values, "inputs": p.inputs}
                                       for p in b.patches.values()]}
                          for b in list(self._banks.values()) if id(b.module) in paths and b.patches]}

    def load_resume_state(self, model, tok, hparams, state: dict) -> None:
        for saved in state["banks"]:
            bank = self.bank(model.get_submodule(saved["path"]))
            for p in saved["patches"]:
                bank.add(_Patch(p["keys"], p["bias"], p["values"], p["inputs"]))

    def apply(self, model, tok, adapter, requests: Sequence[EditRequest], hp: TPatcherHparams) -> TPatcherHandle:
        module = adapter.module(adapter.mlp_path(hp.layer))
        memory = memory_inputs(model, tok, module, hp.memory_tokens, hp.memory_corpus)
        bank = self.bank(module)
        # earlier edits' positions: the new patch must not fire there either (a term of its own in the
        # loss), so that undoing it later cannot change what an earlier edit does
        earlier = torch.cat([memory[:0], *[p.inputs for p in bank.patches.values() if p.inputs is not None]])
        handle = TPatcherHandle(self, bank, None)
        try:
            patch = self._train(model, tok, adapter, bank, memory, earlier, requests, hp)
            if not all(torch.isfinite(t).all() for t in (patch.keys, patch.bias, patch.values)):
                raise EditFailed("t-patcher produced a non-finite patch; the model was restored")
            handle.patch_id = bank.add(patch)
        except BaseException:
            handle.restore()
            raise
        return handle

    def _train(self, model, tok, adapter, bank: PatchBank, memory: torch.Tensor, earlier: torch.Tensor, requests,
               hp: TPatcherHparams) -> _Patch:
        device = model_device(model)
        batch = request_batch(tok, requests, device)
        T = batch.input_ids.shape[1]
        ar = torch.arange(T, device=device)
        lens = batch.attention_mask.sum(1)
        # positions whose output predicts a target token: last prompt token .. second-to-last token
        edit_pos = (ar[None] >= (batch.prompt_lens - 1)[:, None]) & (ar[None] < (lens - 1)[:, None])
        got = {}
        # at the last layer only the final norm and the unembedding lie above the patch: run just those
        last = (adapter._check_layer(hp.layer) == adapter.n_layers - 1
                and getattr(model.config, "final_logit_softcapping", None) is None)
        hooks = [bank.module.register_forward_hook(lambda _m, inp, _o: got.__setitem__("x", inp[0].detach().float()))]
        if last:
            block = adapter.block(hp.layer)
            hooks.append(block.register_forward_hook(
                lambda _m, _i, out: got.__setitem__("h", (out[0] if isinstance(out, tuple) else out).detach())))
        try:
            with torch.no_grad():  # the MLP's input does not depend on patches at the same MLP
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        finally:
            for h in hooks:
                h.remove()
        x = got["x"]  # (B, T, d)
        sel_b, sel_t = batch.target_mask[:, 1:].nonzero(as_tuple=True)  # the logit at t predicts token t + 1
        sel_tgt = batch.input_ids[sel_b, sel_t + 1]
        n_tgt = batch.target_mask.sum(1).float()
        owner = torch.arange(len(requests), device=device)[:, None].expand(-1, T)[edit_pos]  # request of each edit position
        x_edit = x[edit_pos]  # (N, d)
        counts = torch.bincount(owner, minlength=len(requests)).clamp(min=1)
        x_mean = torch.zeros(len(requests), x.shape[-1], device=device).index_add_(0, owner, x_edit) / counts[:, None]
        norm = x_mean.norm(dim=1, keepdim=True).clamp(min=1e-6)
        keys = nn.Parameter((x_mean / norm).repeat_interleave(hp.n_neurons, 0))
        bias = nn.Parameter((-hp.init_cos * norm.squeeze(1)).repeat_interleave(hp.n_neurons, 0))
        values = nn.Parameter(torch.zeros(len(requests) * hp.n_neurons, x.shape[-1], device=device))
        mine = owner * hp.n_neurons  # first neuron of each edit position's request
        opt = torch.optim.Adam([keys, bias, values], lr=hp.lr)
        patch = _Patch(keys, bias, values)
        if last:  # the fixed inputs of the fast path, gathered once
            x_sel, h_sel = x[sel_b, sel_t], got["h"][sel_b, sel_t]
        with frozen(model):
            try:
                bank.training = patch
                for _ in range(hp.num_steps):
                    opt.zero_grad()
                    if last:  # only at the positions that predict target tokens
                        h_out = h_sel + (torch.relu(PatchBank.pre_activation(x_sel, patch)) @ patch.values).to(h_sel.dtype)
                        logp = torch.log_softmax(adapter.unembed()(adapter.final_norm()(h_out)).float(), -1)
                        tok_nll = -logp.gather(-1, sel_tgt[:, None]).squeeze(-1)
                        ce = (torch.zeros(len(requests), device=device).index_add(0, sel_b, tok_nll) / n_tgt).mean()
                    else:
                        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                        ce = target_nll(logits, batch).mean()
                    a_edit = PatchBank.pre_activation(x_edit, patch)  # (N, n_total)
                    # each edit position must fire its own request's neurons
                    own = torch.stack([a_edit[torch.arange(len(owner)), mine + j] for j in range(hp.n_neurons)], 1)
                    margin = torch.relu(hp.edit_margin - own).mean() + sum(
                        torch.relu(PatchBank.pre_activation(xs_, patch) + hp.memory_margin).mean()
                        for xs_ in (memory, earlier) if len(xs_))  # corpus and earlier edits weigh alike
                    if ce.item() < hp.stop_loss and margin.item() == 0:
                        break
                    (ce + hp.act_weight * margin).backward()
                    opt.step()
            finally:
                bank.training = None
        return _Patch(keys.detach().clone(), bias.detach().clone(), values.detach().clone(), x_edit)
