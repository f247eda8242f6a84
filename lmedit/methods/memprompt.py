"""MemPrompt (Madaan et al. 2022, "Memory-assisted prompt editing to improve GPT-3 after deployment").

A growing memory of (key -> feedback) pairs next to a frozen model. Here the key is the edit's prompt (the
"question") and the feedback is the corrected fact, "{prompt} {target_new}". For every input the model sees (each
row of each forward call, see `_incontext`), the memory is looked up by sentence-embedding cosine similarity:
only when the closest stored key reaches `threshold` is its feedback put in front of the input (`fact_template`,
then `query_prefix`); otherwise the input goes to the model untouched. That threshold is what separates MemPrompt
from IKE, which always prepends its top-k. With `max_facts` > 1, every key above the threshold (up to that many,
the most similar next to the input) contributes its fact.

Threshold (all-MiniLM-L6-v2, CounterFact edit split, first 20 records; the query is the text the model is
called with, so prompt + target in teacher-forced scoring): the edit prompt itself scores 0.79-0.97 against its
key, its paraphrase 0.42-0.90 (most above 0.65), the unrelated neighbourhood prompts 0.09-0.59, other edits'
prompts at most 0.59. The default 0.65 keeps every neighbourhood prompt out and most paraphrases in.

Embedder: `minilm` or `model`, chosen explicitly (the `model` embedder's cosines live on another scale: set the
threshold for it). Removal drops the edit's memory entry; an empty memory removes the hooks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..hparams import HParams
from ..requests import EditRequest
from ..tokens import target_text
from ._embedding import EMBEDDERS
from ._incontext import InContextMemory, InContextMethod
from .registry import register


@dataclass
class MemPromptHparams(HParams):
    threshold: float = field(default=0.65, metadata={"help": "cosine a stored key must reach for its feedback to be prepended"})
    embedder: str = field(default="minilm", metadata={"help": "'minilm' (all-MiniLM-L6-v2) or 'model' (the edited model's mean hidden state)"})
    fact_template: str = field(default="New Fact: {fact}\n", metadata={"help": "one prepended feedback; {fact} = prompt + target_new"})
    query_prefix: str = field(default="Prompt: ", metadata={"help": "text that closes the feedback, right before the input (only when one is prepended)"})
    max_facts: int = field(default=1, metadata={"help": "at most this many feedbacks above the threshold are prepended"})

    def validate(self):
        self.check(-1.0 <= self.threshold <= 1.0, "threshold is a cosine: it must be in [-1, 1]")
        self.check(self.embedder in EMBEDDERS, f"embedder must be one of {EMBEDDERS}")
        self.check("{fact}" in self.fact_template, "fact_template must contain {fact}")
        self.check(self.max_facts >= 1, "max_facts must be >= 1")


class MemPromptMemory(InContextMemory):
    """(key embedding, feedback) per edit; a feedback is used only above the threshold."""

    def __init__(self, tok, hp: MemPromptHparams, embedder):
        super().__init__(tok, hp)
        self.embedder = embedder
        self.keys = torch.zeros(0, embedder.dim)  # (N, D)
        self.feedback: list[str] = []

    def make_entries(self, requests: Sequence[EditRequest]):
        keys = self.embedder.encode([r.prompt for r in requests])
        return [(key, self.hp.fact_template.format(fact=r.prompt + target_text(r.prompt, r.target_new)))
                for r, key in zip(requests, keys)]

    def rebuild(self) -> None:
        entries = list(self.entries.values())
        self.keys = torch.stack([k for k, _ in entries]) if entries else torch.zeros(0, self.embedder.dim)
        self.feedback = [f for _, f in entries]

    def similarity(self, texts: list[str]) -> torch.Tensor:
        """(B, N) cosine between each text and each stored key."""
        return self.embedder.encode(texts) @ self.keys.T

    def choose(self, texts: list[str]) -> list[tuple[str, bool]]:
        sim = self.similarity(texts)
        out = []
        for row in sim:
            k = min(self.hp.max_facts, row.numel())
            vals, idx = row.topk(k)
            hits = [int(i) for v, i in zip(vals, idx) if v >= self.hp.threshold]
            ctx = "".join(self.feedback[i] for i in reversed(hits))
            out.append((ctx + self.hp.query_prefix if ctx else "", False))
        return out


@register
class MemPrompt(InContextMethod):
    name = "memprompt"
    hparams_cls = MemPromptHparams
    memory_cls = MemPromptMemory

    def make_memory(self, model, tok, hp: MemPromptHparams) -> MemPromptMemory:
        return MemPromptMemory(tok, hp, self.embedder(hp.embedder, model, tok))
