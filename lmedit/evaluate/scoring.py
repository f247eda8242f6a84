"""Run the model for evaluation: batched teacher-forced scoring and batched greedy generation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..tokens import batch_prompt_targets, context_length


@dataclass
class TFScore:
    """Teacher-forced view of one prompt+target: argmax at the target positions and mean NLL."""
    pred_ids: list[int]
    target_ids: list[int]
    nll: float

    @property
    def accuracy(self) -> float:
        return sum(p == t for p, t in zip(self.pred_ids, self.target_ids)) / len(self.target_ids)


@torch.no_grad()
def teacher_forced(model, tok, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32) -> list[TFScore]:
    out: list[TFScore] = []
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        batch = batch_prompt_targets(tok, prompts[i:i + batch_size], targets[i:i + batch_size],
                                     context_length(model)).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1)  # position t predicts token t+1
        nxt = batch.input_ids[:, 1:]
        mask = batch.target_mask[:, 1:]
        argmax = logp.argmax(-1)
        tok_nll = -logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        for b in range(len(batch.targets)):
            m = mask[b]
            out.append(TFScore(argmax[b][m].tolist(), nxt[b][m].tolist(), tok_nll[b][m].mean().item()))
    return out


@torch.no_grad()
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int = 24, batch_size: int = 32) -> list[str]:
    """Greedy continuations (text after the prompt), left-padded batches, stop at EOS."""
    device = next(model.parameters()).device
    texts: list[str] = []
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, top_p=None, top_k=None, temperature=None)
            new = gen[:, enc["input_ids"].shape[1]:]
            texts.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        tok.padding_side = old_side
    return texts
