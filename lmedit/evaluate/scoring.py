"""Run the model for evaluation: batched teacher-forced scoring and batched greedy generation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..tokens import PromptTargetBatch, batch_prompt_targets, context_length, encode_prompt, encode_target, right_pad


@dataclass
class TFScore:
    """Teacher-forced view of one prompt+target: argmax at the target positions and mean NLL."""
    pred_ids: list[int]
    target_ids: list[int]
    nll: float

    @property
    def accuracy(self) -> float:
        return sum(p == t for p, t in zip(self.pred_ids, self.target_ids)) / len(self.target_ids)


def accepts_logits_to_keep(model) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def target_logits(model, batch: PromptTargetBatch) -> tuple[torch.Tensor, int]:
    """(logits, first): logits at positions first .. T-1 of the batch, first = the last prompt token of
    the shortest prompt (no earlier position predicts a target token); only those are computed when
    the model takes `logits_to_keep` (the unembedding is a fifth of a small model's compute)."""
    first = int(batch.prompt_lens.min()) - 1
    width = batch.input_ids.shape[1]
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = torch.arange(first, width, device=batch.input_ids.device)
        return model(**kwargs).logits, first
    return model(**kwargs).logits[:, first:], first


@torch.no_grad()
def teacher_forced(model, tok, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32) -> list[TFScore]:
    """Scores in input order; pairs are batched longest first so that rows of a batch have similar lengths."""
    device = next(model.parameters()).device
    max_len = context_length(model)
    lengths = [len(encode_prompt(tok, p)) + len(encode_target(tok, p, t)) for p, t in zip(prompts, targets, strict=True)]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[TFScore | None] = [None] * len(lengths)
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        batch = batch_prompt_targets(tok, [prompts[j] for j in chunk], [targets[j] for j in chunk], max_len).to(device)
        logits, first = target_logits(model, batch)
        logp = torch.log_softmax(logits[:, :-1].float(), -1)  # position t predicts token t+1
        nxt = batch.input_ids[:, first + 1:]
        mask = batch.target_mask[:, first + 1:]
        argmax = logp.argmax(-1)
        tok_nll = -logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        for b, j in enumerate(chunk):
            m = mask[b]
            out[j] = TFScore(argmax[b][m].tolist(), nxt[b][m].tolist(), tok_nll[b][m].mean().item())
    return out  # type: ignore[return-value]


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int | Sequence[int] = 24,
             batch_size: int = 32) -> list[str]:
    """Greedy continuations (text after the prompt) in input order, stop at EOS. `max_new_tokens` is one
    budget for all prompts or one per prompt (prompts with the same budget are batched together).
    Prompts are batched longest first (left-padded), so that little of a batch is padding."""
    device = next(model.parameters()).device
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts):
        raise ValueError(f"{len(budgets)} budgets for {len(prompts)} prompts")
    texts: list[str | None] = [None] * len(prompts)
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        for budget in sorted(set(budgets)):
            same = [i for i, b in enumerate(budgets) if b == budget]
            order = sorted(same, key=lambda i: -len(encode_prompt(tok, prompts[i])))
            for i in range(0, len(order), batch_size):
                chunk = order[i:i + batch_size]
                enc = tok([prompts[j] for j in chunk], return_tensors="pt", padding=True).to(device)
                gen = model.generate(**enc, max_new_tokens=budget, do_sample=False, num_beams=1,
                                     pad_token_id=tok.pad_token_id, top_p=None, top_k=None, temperature=None)
                new = gen[:, enc["input_ids"].shape[1]:]
                for j, text in zip(chunk, tok.batch_decode(new, skip_special_tokens=True)):
                    texts[j] = text
    finally:
        tok.padding_side = old_side
    return texts  # type: ignore[return-value]


@dataclass
class LLScore:
    """Log-likelihood of one target after its prompt: summed log-prob of the target tokens and their count."""
    logprob: float
    n_tokens: int
    greedy: bool  # every target token is the argmax continuation

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens


@torch.no_grad()
def loglikelihood(model, tok, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32) -> list[LLScore]:
    """Summed log-probability of each target after its prompt (tokenised as in tokens.py, like teacher_forced).

    Pairs whose prompt + target minus its last token are the same token sequence share one forward row (the
    answer options " A".." D" or " yes"/" no" after one prompt cost one row, not one per option). Rows are
    sorted by length, right-padded, batch_size rows per forward, and results come back in input order. Only the
    logits at positions that predict target tokens are computed when the model takes `logits_to_keep`.
    """
    device = next(model.parameters()).device
    slice_ok = accepts_logits_to_keep(model)
    max_len = context_length(model)
    rows: dict[tuple[int, ...], int] = {}  # token sequence -> row number
    row_plen: list[int] = []
    pair_row, pair_tids = [], []
    for p, t in zip(prompts, targets, strict=True):
        pi, ti = encode_prompt(tok, p), encode_target(tok, p, t)
        seq = tuple(pi + ti[:-1])
        if max_len is not None and len(seq) + 1 > max_len:
            raise ValueError(f"prompt + target is {len(seq) + 1} tokens, longer than the model context ({max_len}): {p!r}")
        key = seq + (-len(pi),)  # the prompt length is part of the key (it fixes where the target starts)
        if key not in rows:
            rows[key] = len(rows)
            row_plen.append(len(pi))
        pair_row.append(rows[key])
        pair_tids.append(ti)
    seqs = [list(k[:-1]) for k in rows]
    users: list[list[int]] = [[] for _ in seqs]
    for j, r in enumerate(pair_row):
        users[r].append(j)
    out: list[LLScore | None] = [None] * len(pair_row)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda r: -len(seqs[r]))
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        ids, att = right_pad([seqs[r] for r in chunk], pad)
        width = ids.shape[1]
        lo = min(row_plen[r] for r in chunk) - 1  # the logit at position t predicts token t+1
        hi = width  # the last token of a row predicts its final target token
        kwargs = {"input_ids": ids.to(device), "attention_mask": att.to(device), "use_cache": False}
        if slice_ok:
            kwargs["logits_to_keep"] = torch.arange(lo, hi, device=device)
        logits = model(**kwargs).logits
        if not slice_ok:
            logits = logits[:, lo:hi]
        logp = torch.log_softmax(logits.float(), -1)
        for b, r in enumerate(chunk):
            start = row_plen[r] - 1 - lo
            for j in users[r]:
                tids = torch.tensor(pair_tids[j], device=device)
                here = logp[b, start:start + len(tids)]
                lp = here.gather(-1, tids.unsqueeze(-1)).squeeze(-1)
                out[j] = LLScore(lp.sum().item(), len(tids), bool((here.argmax(-1) == tids).all()))
    return out  # type: ignore[return-value]
