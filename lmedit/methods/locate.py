"""Model plumbing shared by the locate-then-edit methods (ROME, R-ROME, MEMIT, PMET, EMMET, AlphaEdit).

Three things:

(a) Keys. The key of a request at layer l is the input of that layer's MLP output projection
    (`adapter.mlp_out_path(l)`) at the LAST token of the subject, averaged over a few contexts:
    the bare prompt and the prompt after each of a small FIXED list of neutral prefixes
    (`DEFAULT_PREFIXES`). ROME/MEMIT sample such prefixes from the model; a fixed list keeps edits
    deterministic and reproducible. The subject is located through the tokenizer's character
    offsets (a fast tokenizer is required): the first occurrence of the subject in the prompt, and
    the token that covers its last character; so the subject may sit anywhere in the prompt.

(b) Target values. For all requests at once, one vector δ_i per request (and per site) is added to
    the output of a module (the MLP output projection at the edit layer, i.e. the residual stream
    there; PMET also uses the attention output projection) at the subject's last token, in every
    context row of that request, and optimised with Adam so that
        loss_i = mean_ctx NLL(target_new | ctx + prompt)                  (teacher-forced, per token mean)
               + kl_factor · KL(p_orig ‖ p_δ) at the last token of "{subject} is a"
               + weight_decay · ‖δ_i‖² / ‖h_i‖²
    with ‖δ_i‖ ≤ clamp_norm_factor · ‖h_i‖ after every step (h_i: the reference vector at the site
    for the bare prompt). All rows of all requests go through ONE padded forward/backward per step;
    the total loss is the SUM of the per-request losses and Adam is elementwise, so a request's δ
    does not depend on which other requests share the batch. A request whose loss drops below
    `stop_loss` is frozen (its δ is kept at the value that reached the threshold).
    Cost: rows are aligned so that every subject ends in one column; the columns before it cannot
    depend on δ (causal attention) and run once, as a KV cache, and the blocks below the edit layer
    run once too (`ModelAdapter.replay_below`), so a step costs the upper blocks over the rest of
    each row only.

(c) Helpers that read module inputs/outputs at the subject's last token for given contexts, and
    `second_moments`, the bridge to `lmedit.stats`.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..hparams import HParams
from ..models.adapters import ModelAdapter
from ..models.hooks import Trace, forward_until
from ..requests import EditRequest
from ..tokens import encode_target, right_pad

# Neutral, fact-free sentences put before the prompt when computing keys and target values.
DEFAULT_PREFIXES: tuple[str, ...] = (
    "Here is a fact. ",
    "The following is from an encyclopedia. ",
    "I read this in a book. ",
    "Note: ",
)
KL_TEMPLATE = "{} is a"


# --- locating the subject ------------------------------------------------------------------
def subject_last_token(tok, text: str, subject: str, start: int = 0) -> tuple[list[int], int]:
    """Token ids of `text` and the index of the token covering the last character of the first
    occurrence of `subject` at or after character `start`."""
    if not getattr(tok, "is_fast", False):
        raise TypeError("locating the subject needs a fast tokenizer (character offsets)")
    at = text.find(subject, start)
    if at < 0:
        raise ValueError(f"subject {subject!r} not found in {text!r}")
    last_char = at + len(subject) - 1
    while last_char > at and text[last_char].isspace():
        last_char -= 1
    enc = tok(text, return_offsets_mapping=True)
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        if s <= last_char < e:
            return list(enc["input_ids"]), i
    raise ValueError(f"no token covers the end of subject {subject!r} in {text!r}")


def contexts(prefixes: Sequence[str]) -> list[str]:
    """The bare prompt first, then each distinct non-empty prefix."""
    return [""] + [p for p in dict.fromkeys(prefixes) if p]


@dataclass
class Rows:
    """Right-padded token rows, each with the position of its request's subject last token."""
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    subj_pos: torch.Tensor  # (B,)
    owner: torch.Tensor  # (B,) request index of each row
    lengths: torch.Tensor  # (B,)
    extra: dict = field(default_factory=dict)

    def to(self, device) -> "Rows":
        extra = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.extra.items()}
        return Rows(self.input_ids.to(device), self.attention_mask.to(device), self.subj_pos.to(device),
                    self.owner.to(device), self.lengths.to(device), extra)


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def prompt_rows(tok, requests: Sequence[EditRequest], prefixes: Sequence[str]) -> Rows:
    """One row per (request, context), request-major: row = i * n_ctx + j."""
    seqs, pos, owner = [], [], []
    ctxs = contexts(prefixes)
    for i, r in enumerate(requests):
        for c in ctxs:
            ids, p = subject_last_token(tok, c + r.prompt, r.subject, start=len(c))
            seqs.append(ids)
            pos.append(p)
            owner.append(i)
    ids, att = right_pad(seqs, _pad_id(tok))
    return Rows(ids, att, torch.tensor(pos), torch.tensor(owner), att.sum(1), {"n_ctx": len(ctxs)})


def _device(model) -> torch.device:
    return next(model.parameters()).device


# --- (c) reading activations at the subject ----------------------------------------------------
@torch.no_grad()
def read_at_subject(model, rows: Rows, inputs: Sequence[str] = (), outputs: Sequence[str] = (),
                    batch_size: int = 64) -> dict[tuple[str, str], torch.Tensor]:
    """Inputs of the modules in `inputs` and outputs of those in `outputs` at each row's subject
    position, in one pass: {("input"|"output", path): (B, d) float32 on the model's device}."""
    dev = _device(model)
    out: dict[tuple[str, str], list[torch.Tensor]] = {**{("input", p): [] for p in inputs},
                                                      **{("output", p): [] for p in outputs}}
    for a in range(0, len(rows.owner), batch_size):
        ids = rows.input_ids[a:a + batch_size].to(dev)
        att = rows.attention_mask[a:a + batch_size].to(dev)
        pos = rows.subj_pos[a:a + batch_size].to(dev)
        with Trace(model, list(inputs), keep_input=True) as ti, Trace(model, list(outputs), keep_output=True) as to:
            forward_until(model, [*inputs, *outputs], input_ids=ids, attention_mask=att)  # no block above them
        idx = torch.arange(len(pos), device=dev)
        for p in inputs:
            out[("input", p)].append(ti[p].input[idx, pos].float())
        for p in outputs:
            out[("output", p)].append(to[p].output[idx, pos].float())
    return {k: torch.cat(v) for k, v in out.items()}


def _mean_by_owner(x: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    s = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, owner.to(x.device), x)
    c = torch.bincount(owner.to(x.device), minlength=n).to(x.dtype)
    return s / c[:, None]


@dataclass
class Keys:
    mean: dict[int, torch.Tensor]  # layer -> (n, d_in) key averaged over contexts
    bare: dict[int, torch.Tensor]  # layer -> (n, d_in) key of the bare prompt
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # path -> (n, d) bare-prompt outputs


def compute_keys(model, tok, adapter: ModelAdapter, requests: Sequence[EditRequest], layers: Sequence[int],
                 prefixes: Sequence[str] = DEFAULT_PREFIXES, outputs: Sequence[str] = (),
                 batch_size: int = 64) -> Keys:
    """Keys (inputs of mlp_out at the subject's last token) of every request at every layer, in one pass.
    `outputs`: module paths whose outputs at the subject of the bare prompt are read in the same pass
    (into `Keys.outputs`, path -> (n, d))."""
    rows = prompt_rows(tok, requests, prefixes)
    paths = {l: adapter.mlp_out_path(l) for l in layers}
    got = read_at_subject(model, rows, list(paths.values()), list(outputs), batch_size)
    n_ctx = rows.extra["n_ctx"]
    mean = {l: _mean_by_owner(got[("input", p)], rows.owner, len(requests)) for l, p in paths.items()}
    bare = {l: got[("input", p)][::n_ctx].clone() for l, p in paths.items()}  # context 0 is the bare prompt
    outs = {p: got[("output", p)][::n_ctx].clone() for p in outputs}
    return Keys(mean, bare, outs)


def outputs_at_subject(model, tok, requests: Sequence[EditRequest], paths: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of modules (e.g. a block = the residual stream after it) at the subject's last token
    of each bare prompt: path -> (n, d) float32."""
    rows = prompt_rows(tok, requests, ())
    got = read_at_subject(model, rows, (), paths)
    return {p: got[("output", p)] for p in paths}


# --- (b) batched target optimisation --------------------------------------------------------
@dataclass
class Site:
    """Where a δ is added: a module's output. `norm_ref` says which vector h bounds ‖δ‖:
    "output" (the module's own output) or "residual" (the output of the block that contains it)."""
    path: str
    norm_ref: str = "output"
    block: str | None = None
    width: int | None = None  # size of δ, for modules without out_features (a whole block: the hidden size)


@dataclass
class TargetResult:
    deltas: dict[str, torch.Tensor]  # site path -> (n, d) float32
    init: dict[str, torch.Tensor]  # site path -> (n, d) the site's output for the bare prompt (δ = 0)
    ref: dict[str, torch.Tensor]  # site path -> (n, d) the vector whose norm bounds δ
    losses: torch.Tensor  # (n,) final loss per request
    nll: torch.Tensor  # (n,) final target NLL per request
    steps: torch.Tensor  # (n,) steps taken per request


def _target_rows(tok, requests: Sequence[EditRequest], prefixes: Sequence[str]) -> Rows:
    """Rewrite rows (request × context, prompt followed by the target minus its last token) then
    one KL row per request ("{subject} is a")."""
    ctxs = contexts(prefixes)
    seqs, pos, owner, tstart, tids, kl = [], [], [], [], [], []
    for i, r in enumerate(requests):
        t = encode_target(tok, r.prompt, r.target_new)
        for c in ctxs:
            ids, p = subject_last_token(tok, c + r.prompt, r.subject, start=len(c))
            seqs.append(ids + t[:-1])
            pos.append(p)
            owner.append(i)
            tstart.append(len(ids))
            tids.append(t)
            kl.append(False)
    for i, r in enumerate(requests):
        ids, p = subject_last_token(tok, KL_TEMPLATE.format(r.subject), r.subject)
        seqs.append(ids)
        pos.append(p)
        owner.append(i)
        tstart.append(len(ids))
        tids.append([])
        kl.append(True)
    ids, att = right_pad(seqs, _pad_id(tok))
    B, T = ids.shape
    # target bookkeeping: logit at position tstart-1+j predicts target token j
    tmask = torch.zeros(B, T, dtype=torch.bool)
    tgt = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        for j, tid in enumerate(tids[b]):
            tmask[b, tstart[b] - 1 + j] = True
            tgt[b, tstart[b] - 1 + j] = tid
    return Rows(ids, att, torch.tensor(pos), torch.tensor(owner), att.sum(1),
                {"n_ctx": len(ctxs), "tmask": tmask, "tgt": tgt, "kl": torch.tensor(kl)})


def align_on_subject(rows: Rows, pad_id: int) -> Rows:
    """The same rows, left-padded so that every row's subject last token sits in one column c.

    δ enters at that column, and attention is causal, so columns < c are the same at every step of
    the optimisation: they are computed once and kept as a KV cache (`_FixedPrefix`). Target columns
    (`tmask`, `tgt`) move with their rows; `lengths` becomes each row's end column; position ids
    count each row's own tokens from 0 (extra["position_ids"])."""
    shift = rows.subj_pos.max() - rows.subj_pos
    ends = rows.lengths + shift
    B, W = len(shift), int(ends.max())
    cols = torch.arange(rows.input_ids.shape[1])[None] + shift[:, None]  # new column of each old one
    keep = rows.attention_mask.bool()
    b_idx = torch.arange(B)[:, None].expand_as(cols)

    def moved(x: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((B, W), fill, dtype=x.dtype)
        out[b_idx[keep], cols[keep]] = x[keep]
        return out

    ids = moved(rows.input_ids, pad_id)
    att = moved(rows.attention_mask, 0)
    extra = dict(rows.extra)
    for k in ("tmask", "tgt"):
        if k in extra:
            extra[k] = moved(extra[k], 0)
    extra["position_ids"] = (att.cumsum(1) - 1).clamp(min=0)
    return Rows(ids, att, rows.subj_pos + shift, rows.owner, ends, extra)


class _FixedPrefix:
    """Model inputs for the columns from `start` on, with columns < start run once (no grad) and
    handed to every call as a fresh KV cache (a used cache holds the previous step's graph)."""

    def __init__(self, model, rows: Rows, start: int):
        self.model, self.rows, self.start = model, rows, start
        self.kv = None
        if start > 0:
            with torch.no_grad():
                out = model.base_model(input_ids=rows.input_ids[:, :start], attention_mask=rows.attention_mask[:, :start],
                                       position_ids=rows.extra["position_ids"][:, :start], use_cache=True)
            self.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def inputs(self) -> dict:
        r, c = self.rows, self.start
        out = {"input_ids": r.input_ids[:, c:], "attention_mask": r.attention_mask,
               "position_ids": r.extra["position_ids"][:, c:], "use_cache": self.kv is not None}
        if self.kv is not None:
            from transformers import DynamicCache

            out["past_key_values"] = DynamicCache(ddp_cache_data=self.kv, config=self.model.config)
        return out


def _scored_logprobs(model, inputs: dict, sel) -> torch.Tensor:
    """Log-probabilities (float32) at the selected (row, position) pairs only: the trunk runs on all
    tokens, the unembedding only where a score is needed (it is a large share of a small model)."""
    hidden = model.base_model(**inputs)[0]
    logits = model.get_output_embeddings()(hidden[sel])
    return torch.log_softmax(logits.float(), dim=-1)


def _out_features(m) -> int:
    for attr in ("out_features", "nf"):  # nn.Linear, GPT-2 Conv1D
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    raise TypeError(f"cannot tell the output width of {type(m).__name__}")


def optimise_targets(model, tok, requests: Sequence[EditRequest], sites: Sequence[Site], *,
                     chunk: int | None = None, **kwargs) -> TargetResult:
    """Optimise one δ per request and site (see `_optimise_chunk`), `chunk` requests per pass (None: all).

    Each request has its own δ, loss, stopping and Adam moments, so passes over chunks give what one
    pass over all requests gives (up to float rounding); a chunk bounds the memory, which grows with
    the number of requests optimised together (activations of every row are kept for the backward).
    """
    if chunk is None or len(requests) <= chunk:
        return _optimise_chunk(model, tok, requests, sites, **kwargs)
    parts = [_optimise_chunk(model, tok, requests[i:i + chunk], sites, **kwargs)
             for i in range(0, len(requests), chunk)]

    def cat(get):
        return {k: torch.cat([get(p)[k] for p in parts]) for k in get(parts[0])}
    return TargetResult(cat(lambda p: p.deltas), cat(lambda p: p.init), cat(lambda p: p.ref),
                        torch.cat([p.losses for p in parts]), torch.cat([p.nll for p in parts]),
                        torch.cat([p.steps for p in parts]))


def _optimise_chunk(model, tok, requests: Sequence[EditRequest], sites: Sequence[Site], *,
                    prefixes: Sequence[str] = DEFAULT_PREFIXES, lr: float = 0.5, steps: int = 20,
                    kl_factor: float = 0.0625, weight_decay: float = 1e-3, clamp_norm_factor: float = 4.0,
                    stop_loss: float = 5e-2, adapter: ModelAdapter | None = None,
                    layer: int | None = None, reuse_prefix: bool = True) -> TargetResult:
    """Optimise one δ per request and site, all requests in one padded forward/backward per step.

    See the module docstring for the loss. Model parameters are not changed (their requires_grad flags
    are restored). Returns float32 tensors on the model's device. With `adapter` and `layer` (the block
    that holds every site), the blocks below `layer` run once, not at every step (their output does
    not depend on δ). The columns before the subject's last token are computed once too
    (`reuse_prefix`; False recomputes them at every step, for tests).
    """
    n = len(requests)
    dev = _device(model)
    rows = align_on_subject(_target_rows(tok, requests, prefixes), _pad_id(tok)).to(dev)
    # every row's subject ends in column c; nothing before it changes with δ (see align_on_subject)
    c = int(rows.subj_pos[0]) if reuse_prefix else 0
    fixed = _FixedPrefix(model, rows, c)
    subj = rows.subj_pos - c  # δ's column in the computed part: 0
    tmask, tgt, is_kl = rows.extra["tmask"][:, c:], rows.extra["tgt"][:, c:], rows.extra["kl"]
    B = len(rows.owner)
    bidx = torch.arange(B, device=dev)
    kl_rows = bidx[is_kl]
    kl_last = rows.lengths[is_kl] - 1 - c
    n_ctx = rows.extra["n_ctx"]
    rw_owner = rows.owner[~is_kl]
    ntok = tmask.sum(1).clamp(min=1).float()
    # positions whose next-token distribution is scored: the target positions, then each KL row's last
    sel_b, sel_t = tmask.nonzero(as_tuple=True)
    n_t = len(sel_b)
    sel_tgt = tgt[sel_b, sel_t]
    sel_b, sel_t = torch.cat([sel_b, kl_rows]), torch.cat([sel_t, kl_last])
    sel = (sel_b, sel_t)

    dims = {s.path: s.width or _out_features(model.get_submodule(s.path)) for s in sites}
    deltas = {s.path: torch.zeros(n, dims[s.path], device=dev, dtype=torch.float32, requires_grad=True) for s in sites}
    opt = torch.optim.Adam(list(deltas.values()), lr=lr)

    def add_delta(name, output):
        out = output[0] if isinstance(output, tuple) else output
        d = deltas[name]
        add = torch.zeros(out.shape, dtype=d.dtype, device=out.device).index_put((bidx, subj), d[rows.owner])
        new = out + add.to(out.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    flags = {n_: p.requires_grad for n_, p in model.named_parameters()}
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    taken = torch.zeros(n, dtype=torch.long, device=dev)
    init: dict[str, torch.Tensor] = {}
    ref: dict[str, torch.Tensor] = {}
    kl_init = None
    loss_i = nll_i = torch.zeros(n, device=dev)
    replay = (adapter.replay_below(layer, **fixed.inputs())
              if adapter is not None and layer is not None else contextlib.nullcontext())
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with replay:
            for step in range(steps + 1):
                with torch.enable_grad(), Trace(model, [s.path for s in sites], edit_output=add_delta, detach=False):
                    if step == 0:
                        blocks = [s.block for s in sites if s.norm_ref == "residual"]
                        with Trace(model, list(dict.fromkeys([s.path for s in sites] + blocks)), keep_output=True) as cap:
                            logp = _scored_logprobs(model, fixed.inputs(), sel)
                        bare = ~is_kl & (torch.arange(B, device=dev) % n_ctx == 0)
                        for s in sites:
                            init[s.path] = cap[s.path].output[bare, subj[bare]].float()
                            src = cap[s.block].output if s.norm_ref == "residual" else cap[s.path].output
                            ref[s.path] = src[bare, subj[bare]].float()
                    else:
                        logp = _scored_logprobs(model, fixed.inputs(), sel)  # (n_sel, V) at the scored positions only
                    tok_lp = torch.zeros(B, tmask.shape[1], device=dev).index_put(
                        (sel_b[:n_t], sel_t[:n_t]), logp[:n_t].gather(-1, sel_tgt.unsqueeze(-1)).squeeze(-1))
                    row_nll = -(tok_lp.sum(1) / ntok)[~is_kl]  # (n * n_ctx,)
                    nll_i = torch.zeros(n, device=dev).index_add(0, rw_owner, row_nll) / n_ctx
                    kl_lp = logp[n_t:]  # (n, V), KL rows are in request order
                    if kl_init is None:
                        kl_init = kl_lp.detach()
                    kl_i = (kl_init.exp() * (kl_init - kl_lp)).sum(-1)
                    wd_i = sum(deltas[s.path].pow(2).sum(1) / ref[s.path].pow(2).sum(1).clamp(min=1e-12) for s in sites)
                    loss_i = nll_i + kl_factor * kl_i + weight_decay * wd_i
                    newly = ~done & (loss_i.detach() < stop_loss)
                    done = done | newly
                    if bool(done.all()) or step == steps:
                        break
                    taken += (~done).long()
                    opt.zero_grad()
                    (loss_i * (~done).float()).sum().backward()
                frozen = {k: v.detach().clone() for k, v in deltas.items()}
                opt.step()
                with torch.no_grad():
                    for s in sites:
                        d = deltas[s.path]
                        d[done] = frozen[s.path][done]
                        limit = clamp_norm_factor * ref[s.path].norm(dim=1)
                        norm = d.norm(dim=1).clamp(min=1e-12)
                        d.mul_(torch.clamp(limit / norm, max=1.0)[:, None])
    finally:
        for n_, p in model.named_parameters():
            p.requires_grad_(flags[n_])
    return TargetResult({k: v.detach() for k, v in deltas.items()}, init, ref, loss_i.detach(), nll_i.detach(),
                        taken)


# --- statistics -----------------------------------------------------------------------------
def second_moments(model, tok, adapter: ModelAdapter, layers: Sequence[int], *, n_tokens: int,
                   corpus=None, progress: bool = False) -> dict[int, torch.Tensor]:
    """E[k kᵀ] of the mlp_out input at each layer (float32, CPU), from `lmedit.stats` (cached on disk)."""
    from ..stats import layers_second_moment  # imported here: the stats package is optional at import time

    layers = [adapter._check_layer(l) for l in layers]
    return layers_second_moment(model, tok, adapter, layers, corpus=corpus, n_tokens=n_tokens, progress=progress)


_MOM_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cached_second_moments(model, tok, adapter: ModelAdapter, layers: Sequence[int], *, n_tokens: int,
                          corpus=None) -> dict[int, torch.Tensor]:
    """`second_moments`, kept in memory per model so repeated edits do not reread the disk cache."""
    layers = [adapter._check_layer(l) for l in layers]
    mem = _MOM_CACHE.setdefault(model, {})
    key = lambda l: (l, n_tokens, str(corpus))  # noqa: E731
    missing = [l for l in layers if key(l) not in mem]
    if missing:
        got = second_moments(model, tok, adapter, missing, n_tokens=n_tokens, corpus=corpus)
        for l in missing:
            mem[key(l)] = got[l]
    return {l: mem[key(l)] for l in layers}


# --- hyper-parameters shared by the family ----------------------------------------------------
_SOLVE_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class LocateHparams(HParams):
    layers: list[int] = field(default_factory=lambda: [4], metadata={"help": "edited layers (MLP output projections); the last one is where target values are optimised"})
    prefixes: list[str] = field(default_factory=lambda: list(DEFAULT_PREFIXES), metadata={"help": "fixed neutral prefixes; keys/targets are averaged over the bare prompt and these"})
    v_lr: float = field(default=0.5, metadata={"help": "Adam learning rate of the target deltas"})
    v_steps: int = field(default=20, metadata={"help": "optimisation steps of the target deltas"})
    v_weight_decay: float = field(default=1e-3, metadata={"help": "weight of ‖δ‖²/‖h‖² in the target loss"})
    clamp_norm_factor: float = field(default=4.0, metadata={"help": "‖δ‖ is clamped to this times ‖h‖"})
    kl_factor: float = field(default=0.0625, metadata={"help": "weight of the KL term on '{subject} is a'"})
    v_stop_loss: float = field(default=5e-2, metadata={"help": "a request stops optimising once its loss is below this"})
    target_chunk: int = field(default=200, metadata={"help": "requests whose target deltas are optimised together; bounds memory "
                                                    "(GPT-2 XL, float32: about 0.45 GB per request), results do not depend on it"})
    mom2_n_tokens: int = field(default=100_000, metadata={"help": "tokens of the corpus used for E[kkᵀ]"})
    mom2_corpus: str | None = field(default=None, metadata={"help": "corpus for the second moment (None: lmedit.stats default)"})
    solve_dtype: str = field(default="float64", metadata={"help": "dtype of the closed-form solves ('float64' or 'float32')"})

    def validate(self):
        self.check(len(self.layers) > 0, "layers must list at least one layer")
        self.check(len(set(self.layers)) == len(self.layers), "layers must be distinct")
        self.check(self.v_lr > 0, "v_lr must be > 0")
        self.check(self.v_steps >= 1, "v_steps must be >= 1")
        self.check(self.target_chunk >= 1, "target_chunk must be >= 1")
        self.check(self.v_weight_decay >= 0, "v_weight_decay must be >= 0")
        self.check(self.clamp_norm_factor > 0, "clamp_norm_factor must be > 0")
        self.check(self.kl_factor >= 0, "kl_factor must be >= 0")
        self.check(self.mom2_n_tokens >= 1, "mom2_n_tokens must be >= 1")
        self.check(self.solve_dtype in _SOLVE_DTYPES, f"solve_dtype must be one of {sorted(_SOLVE_DTYPES)}")

    @property
    def dtype(self) -> torch.dtype:
        return _SOLVE_DTYPES[self.solve_dtype]

    def target_kwargs(self) -> dict:
        return dict(prefixes=self.prefixes, lr=self.v_lr, steps=self.v_steps, kl_factor=self.kl_factor,
                    weight_decay=self.v_weight_decay, clamp_norm_factor=self.clamp_norm_factor,
                    stop_loss=self.v_stop_loss, chunk=self.target_chunk)


def sorted_layers(adapter: ModelAdapter, layers: Sequence[int]) -> list[int]:
    return sorted(adapter._check_layer(l) for l in layers)


def mlp_out_apply(adapter: ModelAdapter, layer: int, k: torch.Tensor) -> torch.Tensor:
    """W k + b of mlp_out at `layer` for keys k (..., d_in), in float32."""
    m = adapter.mlp_out(layer)
    W = adapter.as_out_in(m.weight).float()
    y = k.float().to(W.device) @ W.T
    b = getattr(m, "bias", None)
    return y + b.float() if b is not None else y


@torch.no_grad()
def add_to_mlp_out(adapter: ModelAdapter, layer: int, delta: torch.Tensor) -> None:
    """W += ΔW (ΔW as (d_out, d_in), any dtype), cast to the weight's dtype; GPT-2's layout handled."""
    w = adapter.as_out_in(adapter.mlp_out_weight(layer))
    w.add_(delta.to(device=w.device, dtype=w.dtype))


def post_norm_preimage(norm: torch.nn.Module, m: torch.Tensor, change: torch.Tensor, iters: int = 8,
                       chunk_elems: int = 50_000_000) -> torch.Tensor:
    """Δm such that norm(m + Δm) ≈ norm(m) + change, row by row (m, change: (n, d)).

    For families that normalise the MLP output before adding it to the residual (Gemma 2/3), a wanted
    change of the residual is not a change of the output projection's output. Damped Gauss-Newton on
    ‖norm(m + Δm) − (norm(m) + change)‖², Jacobians by autograd, so any norm module works. A
    normalised vector has a fixed scale, so a change that leaves that set is met in the least-squares
    sense; the damping keeps Δm out of the norm's null direction (the scale of m)."""
    m, change = m.float(), change.float()
    norm_f = lambda v: norm(v.to(next(norm.parameters()).dtype)).float()  # noqa: E731
    d = m.shape[-1]
    rows = max(1, chunk_elems // (d * d))  # Jacobians are (rows, d, d)
    out = []
    with torch.no_grad():
        for i in range(0, len(m), rows):
            m0, wanted = m[i:i + rows], norm_f(m[i:i + rows]) + change[i:i + rows]
            x = m0.clone()
            err = (wanted - norm_f(x)).pow(2).sum(1)
            lam = torch.full((len(x),), 1e-4, device=x.device)  # Levenberg-Marquardt damping, per row
            for _ in range(iters):
                r = wanted - norm_f(x)
                J = torch.func.vmap(torch.func.jacrev(norm_f))(x)  # (rows, d, d)
                JtJ = J.transpose(1, 2) @ J
                scale = JtJ.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-12)
                A = JtJ + (lam * scale)[:, None, None] * torch.eye(d, device=x.device)
                step = torch.linalg.solve(A, J.transpose(1, 2) @ r[..., None])[..., 0]
                new_err = (wanted - norm_f(x + step)).pow(2).sum(1)
                better = new_err < err
                x = torch.where(better[:, None], x + step, x)
                err = torch.where(better, new_err, err)
                lam = torch.where(better, lam * 0.3, lam * 10)
            out.append(x - m0)
    return torch.cat(out)
