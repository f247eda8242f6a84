"""In-context editing through the model's unchanged call interface (shared by IKE, MemPrompt and SERAC).

The evaluator (and any user) calls the model directly: `model(input_ids=..., attention_mask=...)` for scoring,
`model.generate(...)` for generation. An in-context editor must change what the model says without changing that
interface, so it installs two hooks on the top-level causal LM:

  forward pre-hook   reads each row's own tokens, asks the method's memory for a `Route` per row (context tokens
                     to put in front of the row, and whether the row is answered by an alternative model), and
                     rewrites input_ids / attention_mask / position_ids / logits_to_keep / labels;
  forward hook       maps the outputs back to the caller's own positions, replaces the rows answered by the
                     alternative model, recomputes the loss, and records the per-row layout on the KV cache.

Layout (first call, i.e. no cache or an empty one). With W the longest context in the batch, row b becomes

    [pad .. pad | ctx_b (right-aligned in W columns) | the caller's row exactly as given (its own padding kept)]

so caller column t is column t + W for every row: logits are `out[:, W:]`, a caller's `logits_to_keep` keeps
its meaning. Attention mask: the context's mask, then the caller's. Position ids: the context's tokens count
0..len-1, the caller's position for a row token (theirs if passed, else HF's default arange) moves by len(ctx_b).
The result equals running the model on the concatenated token sequence ctx_b + row_b (up to the float noise of
padding). If a row starts with the tokenizer's BOS (`bos_id`), the context is put *after* it: the prefix carries
the BOS, the row's own BOS is masked out, and the logit at the row's BOS column (which predicts the row's first
real token) is taken from the prefix's last column - again exactly "BOS + ctx + rest of the row".

Generation / KV cache. The first call builds the prefix and attaches it to the returned cache object
(attribute `_lmedit_incontext`). Later calls that pass that cache (HF `generate` decoding steps, or a caller's own
loop) only extend: attention_mask = prefix mask + the caller's mask, position ids shifted per row; input ids and
logits are unchanged (the prefix lives in the cache). A non-empty cache without that attribute was not started
through these hooks and is passed through untouched. Retrieval therefore happens once per sequence, on the text
the first call saw: the prompt for `generate`, prompt + scored continuation for teacher-forced scoring.

Alternative model (SERAC's counterfactual model). Rows routed `alt=True` are computed again by `alt_model` (with
their own context, the same layout, and their own KV cache kept in the attached state), and their logits (and
the loss) replace the base model's. Rows with no context and no alt route see the base model untouched: when no
row in a batch gets base-model context, the base call is not rewritten at all (bit-identical outputs).

Removal. `ContextHooks.remove()` removes both hooks; the model's parameters, buffers and modules are never
touched, so with the hooks gone the model is exactly as before. Memories keep one entry per edit id, so one
edit can be dropped out of many (`InContextHandle.restore`).

Not supported (raise rather than answer wrongly): inputs_embeds without input_ids (retrieval reads the text),
4-D attention masks, 2-D / boolean logits_to_keep, caches whose batch is reordered or resized between calls
(beam search); `output_hidden_states` / `output_attentions` are sliced back to the caller's columns, but for
rows answered by the alternative model only the logits and the loss are replaced.
"""
from __future__ import annotations

import inspect
import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from ..hparams import HParams
from ..requests import EditRequest
from ._embedding import make_embedder
from .base import EditHandle, EditMethod

STATE_ATTR = "_lmedit_incontext"


@dataclass
class Route:
    """What happens to one row: `context` token ids (no BOS) go in front of it; `alt` sends it to the alt model."""
    context: list[int] = field(default_factory=list)
    alt: bool = False


# --- the layout: pure functions over tensors -------------------------------------------------------------------
@dataclass
class Prefix:
    """Context tokens put in front of a batch, right-aligned in W columns."""
    ids: torch.Tensor  # (B, W)
    mask: torch.Tensor  # (B, W) 1 on context tokens
    shift: torch.Tensor  # (B, 1) how far each row's own positions move (context length, BOS not counted)
    bos_col: torch.Tensor  # (B,) caller column of the row's BOS that the prefix replaces, -1 where none

    @property
    def width(self) -> int:
        return self.ids.shape[1]


def real_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    """Each row's own tokens (padding dropped)."""
    if attention_mask is None:
        return input_ids.tolist()
    return [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)]


def make_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, contexts: Sequence[Sequence[int]],
                bos_id: int | None, pad_id: int = 0) -> Prefix | None:
    """The prefix for a first call; None when no row gets any context."""
    B, T = input_ids.shape
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    first_col = mask.long().argmax(1)  # (B,) column of each row's first real token
    first_tok = input_ids.gather(1, first_col[:, None])[:, 0]
    seqs, shift, bos_col = [], [], []
    for b, ctx in enumerate(contexts):
        ctx = list(ctx)
        if ctx and bos_id is not None and int(first_tok[b]) == bos_id and mask[b].any():
            seqs.append([bos_id] + ctx)
            bos_col.append(int(first_col[b]))
        else:
            seqs.append(ctx)
            bos_col.append(-1)
        shift.append(len(ctx))
    W = max(len(s) for s in seqs)
    if W == 0:
        return None
    device = input_ids.device
    ids = torch.full((B, W), pad_id, dtype=input_ids.dtype, device=device)
    pmask = torch.zeros((B, W), dtype=mask.dtype, device=device)
    for b, s in enumerate(seqs):
        if s:
            ids[b, W - len(s):] = torch.tensor(s, dtype=input_ids.dtype, device=device)
            pmask[b, W - len(s):] = 1
    return Prefix(ids, pmask, torch.tensor(shift, device=device)[:, None], torch.tensor(bos_col, device=device))


def _caller_positions(kwargs: dict, B: int, T: int, past_len: int, device) -> torch.Tensor:
    pos = kwargs.get("position_ids")
    if pos is None:  # what HF computes when none are given
        pos = torch.arange(past_len, past_len + T, device=device)[None]
    if pos.ndim != 2:
        raise ValueError(f"in-context editing supports 2-D position_ids, got shape {tuple(pos.shape)}")
    return pos.expand(B, -1)


def _joined_mask(prefix: Prefix, kwargs: dict, B: int, caller_len: int, device) -> torch.Tensor:
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones((B, caller_len), dtype=prefix.mask.dtype, device=device)
    if mask.ndim != 2:
        raise ValueError("in-context editing supports 2-D attention masks only")
    joined = torch.cat([prefix.mask.to(mask.dtype), mask], dim=1)
    rows = (prefix.bos_col >= 0).nonzero().flatten()
    if rows.numel():
        joined[rows, prefix.width + prefix.bos_col[rows]] = 0
    return joined


def kept_columns(keep: int | torch.Tensor, T: int, device) -> torch.Tensor | None:
    """The caller's `logits_to_keep` as explicit columns; None means all of them."""
    if isinstance(keep, int):
        return None if keep == 0 else torch.arange(max(T - keep, 0), T, device=device)
    if keep.ndim != 1 or keep.dtype == torch.bool:
        raise ValueError("in-context editing supports logits_to_keep as an int or a 1-D index tensor")
    return keep.to(device)


def expand_call(kwargs: dict, prefix: Prefix, slice_logits: bool = False) -> tuple[dict, torch.Tensor | None]:
    """First call: put the prefix in front of every row. Returns (new kwargs, the caller's kept columns, None = all).

    slice_logits: the model takes `logits_to_keep`; use it to skip the logits of the context's columns.
    """
    ids = kwargs.get("input_ids")
    B, T = ids.shape
    W, device = prefix.width, ids.device
    pos = _caller_positions(kwargs, B, T, 0, device)
    ctx_pos = (prefix.mask.long().cumsum(1) - 1).clamp(min=0)
    out = dict(kwargs)
    out["input_ids"] = torch.cat([prefix.ids, ids], dim=1)
    out["attention_mask"] = _joined_mask(prefix, kwargs, B, T, device)
    out["position_ids"] = torch.cat([ctx_pos, pos + prefix.shift], dim=1)
    kept = kept_columns(kwargs.get("logits_to_keep", 0), T, device)
    if kept is None and slice_logits:  # no logits for the context's columns (the vocabulary projection is costly)
        kept = torch.arange(T, device=device)
    if kept is not None:  # one extra column first: the prefix's last, for rows whose BOS the prefix replaced
        out["logits_to_keep"] = torch.cat([torch.tensor([W - 1], device=device), kept + W])
    return out, kept


def extend_call(kwargs: dict, prefix: Prefix, past_len: int) -> dict:
    """Later call with a cache that already holds the prefix: extend the mask, shift the positions."""
    ids = kwargs.get("input_ids")
    B, T = ids.shape
    caller_past = past_len - prefix.width
    out = dict(kwargs)
    out["attention_mask"] = _joined_mask(prefix, kwargs, B, caller_past + T, ids.device)
    out["position_ids"] = _caller_positions(kwargs, B, T, caller_past, ids.device) + prefix.shift
    return out


def shrink_output(out, prefix: Prefix, kept: torch.Tensor | None):
    """First call: outputs back to the caller's columns (see module docstring for the BOS column)."""
    W = prefix.width
    logits = out.logits
    if kept is None:
        pre, body = logits[:, W - 1], logits[:, W:]
    else:
        pre, body = logits[:, 0], logits[:, 1:]
    rows = (prefix.bos_col >= 0).nonzero().flatten()
    if rows.numel():
        cols = prefix.bos_col[rows]
        if kept is not None:
            match = kept[None, :] == cols[:, None]  # (R, K)
            has = match.any(1)
            rows, cols = rows[has], match[has].long().argmax(1)
        body = body.index_put((rows, cols), pre[rows])
    out.logits = body.contiguous()
    if getattr(out, "hidden_states", None) is not None:
        out.hidden_states = tuple(h[:, W:] for h in out.hidden_states)
    if getattr(out, "attentions", None) is not None:
        out.attentions = tuple(a[..., W:, W:] for a in out.attentions)
    return out


# --- the hooks -------------------------------------------------------------------------------------------------
@dataclass
class _State:
    """Per-sequence layout, attached to the KV cache so later calls can extend it."""
    prefix: Prefix | None
    alt_rows: torch.Tensor | None = None  # (R,) rows answered by the alt model
    alt_prefix: Prefix | None = None
    alt_cache: Any = None


@dataclass
class _Call:
    state: _State
    first: bool
    caller: dict  # the caller's kwargs (the alt model is run from these)
    past_len: int
    kept: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    want_tuple: bool = False


class ContextHooks:
    """The pre/post forward hooks on one causal LM; `router(rows) -> routes` decides what each row gets."""

    def __init__(self, model: nn.Module, router: Callable[[list[list[int]]], list[Route]], *,
                 bos_id: int | None = None, pad_id: int = 0, alt_model: nn.Module | None = None):
        self.model, self.router = model, router
        self.bos_id, self.pad_id, self.alt_model = bos_id, pad_id, alt_model
        self._stack: list[_Call | None] = []
        self._paused = 0
        self._signature = inspect.signature(model.forward)
        self._slices = "logits_to_keep" in self._signature.parameters
        self._alt_slices = alt_model is not None and "logits_to_keep" in inspect.signature(alt_model.forward).parameters
        self._handles = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True, always_call=True),
        ]

    @staticmethod
    def find(model: nn.Module) -> "ContextHooks | None":
        """The hooks installed on this model, if any."""
        for hook in model._forward_pre_hooks.values():
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, ContextHooks):
                return owner
        return None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def paused(self):
        """Calls of the model inside this block pass through untouched (e.g. the memory's own embedding runs)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # -- pre-hook --
    def _before(self, module, args, kwargs):
        if self._paused:
            self._stack.append(None)
            return None
        if args:  # positional arguments -> keywords, by the forward's signature
            bound = self._signature.bind_partial(*args, **kwargs).arguments
            kwargs = {}
            for name, v in bound.items():
                if self._signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    kwargs.update(v)
                else:
                    kwargs[name] = v
        try:
            call = self._plan(kwargs)
        except BaseException:
            self._stack.append(None)
            raise
        self._stack.append(call)
        if call is None:
            return (), kwargs
        new = dict(kwargs)
        call.labels = new.pop("labels", None)
        call.want_tuple = new.get("return_dict") is False
        new["return_dict"] = True
        prefix = call.state.prefix
        if prefix is not None:
            if call.first:
                new, call.kept = expand_call(new, prefix, self._slices)
            else:
                new = extend_call(new, prefix, call.past_len)
        return (), new

    def _plan(self, kwargs: dict) -> _Call | None:
        past = kwargs.get("past_key_values")
        past_len = past.get_seq_length() if past is not None else 0
        if past_len > 0:
            state = getattr(past, STATE_ATTR, None)
            if state is None:
                return None  # a cache not started through these hooks
            rows = kwargs["input_ids"].shape[0] if kwargs.get("input_ids") is not None else None
            if state.prefix is not None and rows != state.prefix.ids.shape[0]:
                raise RuntimeError("in-context editing: the cache holds a different batch than this call "
                                   "(reordered or resized caches, e.g. beam search, are not supported)")
            return _Call(state, False, kwargs, past_len)
        ids = kwargs.get("input_ids")
        if ids is None:
            raise ValueError("in-context editing needs input_ids (it reads the row's text); got inputs_embeds")
        mask = kwargs.get("attention_mask")
        rows = real_rows(ids, mask)
        with self.paused():  # the router may run the model itself (embedder 'model')
            routes = self.router(rows)
        if len(routes) != len(rows):
            raise RuntimeError(f"router returned {len(routes)} routes for {len(rows)} rows")
        base_ctx = [[] if r.alt else r.context for r in routes]
        prefix = make_prefix(ids, mask, base_ctx, self.bos_id, self.pad_id)
        alt = [b for b, r in enumerate(routes) if r.alt]
        if prefix is None and not alt:
            return None
        state = _State(prefix)
        if alt:
            if self.alt_model is None:
                raise RuntimeError("a row was routed to the alternative model, but none is set")
            idx = torch.tensor(alt, device=ids.device)
            state.alt_rows = idx
            state.alt_prefix = make_prefix(ids[idx], mask[idx] if mask is not None else None,
                                           [routes[b].context for b in alt], self.bos_id, self.pad_id)
        return _Call(state, True, kwargs, 0)

    # -- post-hook --
    def _after(self, module, args, kwargs, output):
        call = self._stack.pop() if self._stack else None
        if call is None or output is None:
            return None
        state = call.state
        if call.first and state.prefix is not None:
            output = shrink_output(output, state.prefix, call.kept)
        if state.alt_rows is not None:
            alt_logits = self._run_alt(call)
            output.logits = output.logits.index_copy(0, state.alt_rows, alt_logits.to(output.logits.dtype))
        cache = getattr(output, "past_key_values", None)
        if cache is not None:
            setattr(cache, STATE_ATTR, state)
        if call.labels is not None:
            loss = module.loss_function(logits=output.logits, labels=call.labels, vocab_size=module.config.vocab_size)
            output = type(output)(**{**dict(output), "loss": loss})
        return output.to_tuple() if call.want_tuple else output

    def _run_alt(self, call: _Call) -> torch.Tensor:
        """The alt model's logits for the alt rows, in the caller's columns."""
        state, caller = call.state, call.caller
        idx = state.alt_rows
        ids = caller["input_ids"]
        B, T = ids.shape
        sub: dict[str, Any] = {"input_ids": ids[idx], "return_dict": True}
        if caller.get("attention_mask") is not None:
            sub["attention_mask"] = caller["attention_mask"][idx]
        if caller.get("position_ids") is not None:
            sub["position_ids"] = caller["position_ids"].expand(B, -1)[idx]
        for k in ("use_cache", "logits_to_keep"):
            if k in caller:
                sub[k] = caller[k]
        sub["past_key_values"] = state.alt_cache
        p = state.alt_prefix
        kept = None
        if p is not None:
            if call.first:
                sub, kept = expand_call(sub, p, self._alt_slices)
            else:
                sub = extend_call(sub, p, state.alt_cache.get_seq_length())
        out = self.alt_model(**sub)
        if call.first and p is not None:
            out = shrink_output(out, p, kept)
        state.alt_cache = getattr(out, "past_key_values", None)
        return out.logits


# --- memories, handles and the method base class ----------------------------------------------------------------
class InContextMemory:
    """A method's memory: one entry per edit id, and the routing of rows (by their text).

    Subclasses implement `make_entries(requests)` (one entry per request), `choose(texts)` (per text: the context
    string to put in front, "" for none, and whether the alt model answers) and, if they keep derived tensors,
    `rebuild()` (called after every add/remove).
    """
    alt_model: nn.Module | None = None

    def __init__(self, tok, hp: HParams):
        self.tok, self.hp = tok, hp
        self.entries: dict[int, Any] = {}
        self._ids = itertools.count()

    def make_entries(self, requests: Sequence[EditRequest]) -> list[Any]:
        raise NotImplementedError

    def choose(self, texts: list[str]) -> list[tuple[str, bool]]:
        raise NotImplementedError

    def rebuild(self) -> None:
        pass

    def add(self, requests: Sequence[EditRequest]) -> list[int]:
        entries = self.make_entries(requests)
        ids = []
        for e in entries:
            i = next(self._ids)
            self.entries[i] = e
            ids.append(i)
        self.rebuild()
        return ids

    def remove(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.entries.pop(i, None)
        self.rebuild()

    def __call__(self, rows: list[list[int]]) -> list[Route]:
        if not self.entries:
            return [Route() for _ in rows]
        texts = [self.tok.decode(r, skip_special_tokens=True) for r in rows]
        routes = []
        for ctx, alt in self.choose(texts):
            ids = self.tok(ctx, add_special_tokens=False)["input_ids"] if ctx else []
            routes.append(Route(ids, alt))
        return routes


class InContextHandle(EditHandle):
    """Drops this apply's memory entries; the hooks go when the memory is empty."""

    def __init__(self, hooks: ContextHooks, memory: InContextMemory, ids: list[int]):
        self.hooks, self.memory, self.ids = hooks, memory, ids
        self.restored = False

    def restore(self) -> None:
        if self.restored:
            return
        self.memory.remove(self.ids)
        if not self.memory.entries:
            self.hooks.remove()
        self.restored = True


class InContextMethod(EditMethod):
    """Shared `apply` of the memory-based in-context editors: the model's weights are never touched.

    The first apply on a model builds the memory (`make_memory`) and installs the hooks; later applies add entries
    to the same memory (sequential editing). One in-context memory per model at a time; later applies must use the
    same hparams as the first. Subclasses set `memory_cls` and implement `make_memory`.
    """
    edits_weights = False
    memory_cls: ClassVar[type[InContextMemory]]

    def make_memory(self, model: nn.Module, tok, hp: HParams) -> InContextMemory:
        raise NotImplementedError

    def embedder(self, name: str, model: nn.Module, tok):
        """The named embedder; the MiniLM one is loaded once per method instance (the Editor keeps one)."""
        if name != "minilm":
            return make_embedder(name, model, tok)
        if getattr(self, "_minilm", None) is None:
            self._minilm = make_embedder(name)
        return self._minilm

    def _memory(self, model, tok, hp: HParams) -> tuple[ContextHooks, InContextMemory, bool]:
        """(hooks, memory, whether they were created now): the model's in-context memory, or a new one."""
        hooks = ContextHooks.find(model)
        if hooks is not None:
            memory = hooks.router
            if not isinstance(memory, self.memory_cls):
                raise ValueError(f"{self.name}: the model already carries another in-context memory "
                                 f"({type(memory).__name__}); restore those edits first")
            if memory.hp != hp:
                raise ValueError(f"{self.name}: the model's memory was built with other hparams "
                                 f"({memory.hp}); restore its edits or apply with the same hparams")
            return hooks, memory, False
        memory = self.make_memory(model, tok, hp)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        bos = tok.bos_token_id if _adds_bos(tok) else None
        return ContextHooks(model, memory, bos_id=bos, pad_id=pad, alt_model=memory.alt_model), memory, True

    def apply(self, model, tok, adapter, requests: Sequence[EditRequest], hp: HParams) -> InContextHandle:
        hooks, memory, created = self._memory(model, tok, hp)
        try:
            with hooks.paused():
                ids = memory.add(requests)
        except BaseException:
            if created:
                hooks.remove()
            raise
        return InContextHandle(hooks, memory, ids)

    def resume_state(self, model) -> dict:
        """The stored entries (each a key tensor and a text), in edit order."""
        hooks = ContextHooks.find(model)
        return {"entries": [list(e) for e in hooks.router.entries.values()] if hooks is not None else []}

    def load_resume_state(self, model, tok, hparams, state: dict) -> None:
        if not state["entries"]:
            return
        _, memory, _ = self._memory(model, tok, hparams)
        for e in state["entries"]:
            memory.entries[next(memory._ids)] = tuple(e)
        memory.rebuild()


def _adds_bos(tok) -> bool:
    """Whether the tokenizer starts an encoded text with its BOS token."""
    if tok.bos_token_id is None:
        return False
    ids = tok("a")["input_ids"]
    return bool(ids) and ids[0] == tok.bos_token_id
