"""Tokenising prompt + target pairs the same way everywhere (editing and scoring)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def target_text(prompt: str, target: str) -> str:
    """The target as it follows the prompt: one space between them unless one is already there."""
    if prompt.endswith((" ", "\n")) or target.startswith((" ", "\n")):
        return target
    return " " + target


def encode_target(tok, prompt: str, target: str) -> list[int]:
    ids = tok(target_text(prompt, target), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids


def encode_prompt(tok, prompt: str) -> list[int]:
    return tok(prompt)["input_ids"]


@dataclass
class PromptTargetBatch:
    """Right-padded prompt+target sequences.

    input_ids, attention_mask: (B, T)
    target_mask: (B, T) True where input_ids[b, t] is a target token; the logit that predicts
                 it sits at position t-1.
    prompt_lens: length of each prompt (its last token is at prompt_lens-1)
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor
    prompt_lens: torch.Tensor
    targets: list[list[int]]

    def to(self, device) -> "PromptTargetBatch":
        return PromptTargetBatch(self.input_ids.to(device), self.attention_mask.to(device),
                                 self.target_mask.to(device), self.prompt_lens.to(device), self.targets)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids, attention_mask), right-padded to the longest."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        att[i, : len(s)] = 1
    return ids, att


def batch_prompt_targets(tok, prompts: Sequence[str], targets: Sequence[str],
                         max_length: int | None = None) -> PromptTargetBatch:
    seqs, masks, plens, tids = [], [], [], []
    for p, t in zip(prompts, targets, strict=True):
        pi, ti = encode_prompt(tok, p), encode_target(tok, p, t)
        seq = pi + ti
        if max_length is not None and len(seq) > max_length:
            raise ValueError(f"prompt + target is {len(seq)} tokens, longer than the model context ({max_length}): {p!r}")
        seqs.append(seq)
        masks.append([False] * len(pi) + [True] * len(ti))
        plens.append(len(pi))
        tids.append(ti)
    ids, att = right_pad(seqs, tok.pad_token_id if tok.pad_token_id is not None else 0)
    tmask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, m in enumerate(masks):
        tmask[i, : len(m)] = torch.tensor(m)
    return PromptTargetBatch(ids, att, tmask, torch.tensor(plens), tids)


def context_length(model) -> int | None:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None
