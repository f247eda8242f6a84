"""SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale"): edit memory + scope classifier +
counterfactual model, next to a base model that is never changed.

    memory          one entry per edit: the embedding of its prompt and its text, "New Fact: {prompt} {target}"
    scope classifier  scores (stored edit, input) pairs: a logistic head on sentence-embedding features
                    [e ⊙ q, cos(e, q)] (e, q unit vectors of the edit prompt and the input). An input is in scope
                    when its best-scoring stored edit has probability > `scope_threshold` (0.5).
    counterfactual model  a copy of the base causal LM fine-tuned to follow an edit given in context: trained on
                    ZsRE train records formatted "{template with src + alt}{query}" -> alt, query = the record's
                    question or its paraphrase (loss on the answer tokens only).

Inference (through `_incontext`, for every row of every forward call): if the classifier puts the row in scope
of a stored edit, that row's logits come from the counterfactual model run on (edit text + row); otherwise the row
goes to the untouched base model (a batch with no routed row is not rewritten at all: bit-identical outputs).

Training data: the ZsRE train split staged at ``<shared data>/zsre/zsre_mend_train-1k.json`` (MEND's train set,
1k-record subset; see its PROVENANCE.md), loaded with `load_dataset("zsre-mend-train")`.
  classifier: the first `classifier_records` records; positives = (edit src, its paraphrase / paraphrase + new
  answer / src + new answer); negatives = (edit src, its NQ locality question + answer, a random other record's
  question and paraphrase, the nearest other question and its paraphrase). Full-batch Adam; ~30 s for 300
  records on 2 CPU cores, nearly all of it embedding the texts.
  counterfactual model: the first `cf_records` records, two examples each (question, paraphrase), `cf_epochs`
  epochs of AdamW at `cf_lr` in batches of `cf_batch_size` (optionally capped at `cf_max_steps`), on every
  parameter or (`cf_train_layers` > 0, default 8) only on the last blocks - ~2.3x cheaper on a CPU.

Both are cached under ``$LMEDIT_HOME/serac`` (default ~/.cache/lmedit/serac), keyed by everything they depend on:
the counterfactual model by the base model's fingerprint (sha256 of every tensor in its state_dict) + the training
config + the data file's sha256; the classifier by its config + the embedder (+ the model fingerprint with
embedder 'model'). Writes are atomic (a temporary folder / file, then os.replace). Train ahead of time with

    lmedit serac train --model smollm2-135m --n 200           # counterfactual model on 200 ZsRE records + classifier
    lmedit serac train --model smollm2-135m --n 200 --set cf_train_layers=0 --force    # every parameter
    lmedit serac path --model smollm2-135m --n 200            # where they are cached, and whether they are

(`apply` trains what is missing itself when `auto_train` is true, and raises otherwise.)
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..hparams import HParams
from ..models.adapters import ModelAdapter
from ..paths import lmedit_home
from ..requests import EditRequest
from ..tokens import batch_prompt_targets, target_text
from ._embedding import EMBEDDERS
from ._incontext import InContextMemory, InContextMethod
from ._memory import target_nll
from .base import EditFailed
from .registry import register

log = logging.getLogger(__name__)


@dataclass
class SeracHparams(HParams):
    template: str = field(default="New Fact: {fact}\nPrompt: ", metadata={"help": "the edit as the counterfactual model sees it before the input; {fact} = prompt + target"})
    embedder: str = field(default="minilm", metadata={"help": "sentence embedder of the scope classifier: 'minilm' or 'model'"})
    scope_threshold: float = field(default=0.5, metadata={"help": "an input is in scope when the classifier's probability exceeds this"})
    classifier_records: int = field(default=300, metadata={"help": "ZsRE train records the scope classifier is trained on"})
    classifier_steps: int = field(default=300, metadata={"help": "full-batch Adam steps of the scope classifier"})
    classifier_lr: float = field(default=0.05, metadata={"help": "scope classifier learning rate"})
    classifier_l2: float = field(default=1e-3, metadata={"help": "L2 penalty on the classifier's product weights"})
    cf_records: int = field(default=200, metadata={"help": "ZsRE train records the counterfactual model is fine-tuned on (2 examples each)"})
    cf_epochs: int = field(default=1, metadata={"help": "epochs over those examples"})
    cf_lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate of the counterfactual model"})
    cf_batch_size: int = field(default=8, metadata={"help": "examples per step"})
    cf_max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0 = no cap)"})
    cf_train_layers: int = field(default=8, metadata={"help": "fine-tune only the last this-many blocks (0 = every parameter); fewer = faster on a CPU"})
    seed: int = field(default=0, metadata={"help": "seed of data shuffling and negative sampling"})
    auto_train: bool = field(default=True, metadata={"help": "train a missing classifier / counterfactual model on apply (else raise)"})

    def validate(self):
        self.check("{fact}" in self.template, "template must contain {fact}")
        self.check(self.embedder in EMBEDDERS, f"embedder must be one of {EMBEDDERS}")
        self.check(0.0 < self.scope_threshold < 1.0, "scope_threshold is a probability: it must be in (0, 1)")
        self.check(self.classifier_records >= 4, "classifier_records must be >= 4")
        self.check(self.classifier_steps >= 1, "classifier_steps must be >= 1")
        self.check(self.classifier_lr > 0, "classifier_lr must be > 0")
        self.check(self.classifier_l2 >= 0, "classifier_l2 must be >= 0")
        self.check(self.cf_records >= 1, "cf_records must be >= 1")
        self.check(self.cf_epochs >= 1, "cf_epochs must be >= 1")
        self.check(self.cf_lr > 0, "cf_lr must be > 0")
        self.check(self.cf_batch_size >= 1, "cf_batch_size must be >= 1")
        self.check(self.cf_max_steps >= 0, "cf_max_steps must be >= 0")
        self.check(self.cf_train_layers >= 0, "cf_train_layers must be >= 0")


def fact_text(prompt: str, target: str) -> str:
    return prompt + target_text(prompt, target)


# --- cache keys and atomic writes -------------------------------------------------------------------------------
def serac_dir() -> Path:
    return lmedit_home() / "serac"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every tensor of the state_dict (name, dtype, shape, bytes): any weight change changes it."""
    h = hashlib.sha256(str(getattr(model.config, "model_type", type(model).__name__)).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _data_file() -> Path:
    from ..data import get_dataset

    return get_dataset("zsre-mend-train").path


def _data_sha() -> str:
    return hashlib.sha256(_data_file().read_bytes()).hexdigest()


def _zsre(n: int) -> list[EditRequest]:
    from ..data import load_dataset

    return list(load_dataset("zsre-mend-train", limit=n, skip_invalid=True))


def cf_key(fingerprint: str, hp: SeracHparams) -> dict:
    return {"base": fingerprint, "template": hp.template, "records": hp.cf_records, "epochs": hp.cf_epochs,
            "lr": hp.cf_lr, "batch_size": hp.cf_batch_size, "max_steps": hp.cf_max_steps, "seed": hp.seed,
            "train_layers": hp.cf_train_layers, "data": _data_sha()}


def cf_path(model: nn.Module, hp: SeracHparams, fingerprint: str | None = None) -> Path:
    fp = fingerprint or model_fingerprint(model)
    mt = getattr(model.config, "model_type", "model")
    return serac_dir() / f"{mt}-{fp[:12]}" / f"cf-n{hp.cf_records}-{_sha(cf_key(fp, hp))[:16]}"


def classifier_key(hp: SeracHparams, fingerprint: str | None) -> dict:
    return {"embedder": hp.embedder, "model": fingerprint if hp.embedder == "model" else None,
            "records": hp.classifier_records, "steps": hp.classifier_steps, "lr": hp.classifier_lr,
            "l2": hp.classifier_l2, "seed": hp.seed, "data": _data_sha(), "version": 1}


def classifier_path(hp: SeracHparams, fingerprint: str | None) -> Path:
    return serac_dir() / f"classifier-{hp.embedder}-n{hp.classifier_records}-{_sha(classifier_key(hp, fingerprint))[:16]}.pt"


def _publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place; if another process got there first, keep theirs."""
    try:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# --- scope classifier -------------------------------------------------------------------------------------------
class ScopeClassifier:
    """p(input in scope of edit) = sigmoid(w · [e ⊙ q, cos(e, q)] + b) for unit vectors e (edit), q (input)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        self.w, self.b = w.float(), b.float()  # (D + 1,), ()

    def logits(self, E: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """(B, N) for inputs Q (B, D) against edits E (N, D)."""
        prod = torch.einsum("bd,nd,d->bn", Q, E, self.w[:-1])  # Σ_d q_d e_d w_d
        return prod + (Q @ E.T) * self.w[-1] + self.b

    def prob(self, E: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(E, Q))

    def state(self) -> dict:
        return {"w": self.w, "b": self.b}


def _pair_features(E: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """(P, D + 1) features of aligned pairs."""
    return torch.cat([E * Q, (E * Q).sum(-1, keepdim=True)], dim=-1)


def train_scope_classifier(embedder, hp: SeracHparams) -> tuple[ScopeClassifier, dict]:
    """Train on ZsRE train pairs (see module docstring); returns the classifier and its train accuracy."""
    recs = [r for r in _zsre(hp.classifier_records) if r.rephrase_prompts and r.locality]
    n = len(recs)
    if n < 4:
        raise EditFailed(f"serac: only {n} usable ZsRE train records for the scope classifier")
    src = embedder.encode([r.prompt for r in recs])
    reph = embedder.encode([r.rephrase_prompts[0] for r in recs])
    reph_ans = embedder.encode([fact_text(r.rephrase_prompts[0], r.target_new) for r in recs])
    src_ans = embedder.encode([fact_text(r.prompt, r.target_new) for r in recs])
    loc = embedder.encode([fact_text(r.locality[0].prompt, r.locality[0].answer) for r in recs])
    gen = torch.Generator().manual_seed(hp.seed)
    idx = torch.arange(n)
    other = (idx + torch.randint(1, n, (n,), generator=gen)) % n  # a random other record
    sim = src @ src.T
    sim.fill_diagonal_(-2.0)
    nearest = sim.argmax(1)  # the most similar other question: a hard negative
    pos_q = torch.cat([reph, reph_ans, src_ans])
    neg_q = torch.cat([loc, src[other], reph[other], src[nearest], reph_ans[nearest]])
    E = torch.cat([src.repeat(3, 1), src.repeat(5, 1)])
    Q = torch.cat([pos_q, neg_q])
    y = torch.cat([torch.ones(len(pos_q)), torch.zeros(len(neg_q))])
    X = _pair_features(E, Q)  # (P, D + 1)
    w = torch.zeros(X.shape[1])
    w[-1] = 10.0  # start from "cosine above 0.6 is in scope"
    w.requires_grad_(True)
    b = torch.tensor(-6.0, requires_grad=True)
    pos_weight = torch.tensor(len(neg_q) / len(pos_q))  # balance the classes
    opt = torch.optim.Adam([w, b], lr=hp.classifier_lr)
    for _ in range(hp.classifier_steps):
        opt.zero_grad()
        z = X @ w + b
        loss = nn.functional.binary_cross_entropy_with_logits(z, y, pos_weight=pos_weight)
        loss = loss + hp.classifier_l2 * (w[:-1] ** 2).sum()
        loss.backward()
        opt.step()
    clf = ScopeClassifier(w.detach(), b.detach())
    with torch.no_grad():
        pred = (X @ clf.w + clf.b) > 0
        acc = {"pos_acc": float(pred[y == 1].float().mean()), "neg_acc": float((~pred[y == 0]).float().mean()),
               "pairs": int(len(y))}
    return clf, acc


def scope_classifier(embedder, hp: SeracHparams, fingerprint: str | None, force: bool = False) -> ScopeClassifier:
    """The cached classifier for these hparams, trained (and cached) if missing."""
    path = classifier_path(hp, fingerprint)
    if path.is_file() and not force:
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
            return ScopeClassifier(st["w"], st["b"])
        except (OSError, RuntimeError, KeyError) as e:
            log.warning("serac: unreadable classifier cache %s (%s); training again", path, e)
    if not hp.auto_train and not force:
        raise EditFailed(f"serac: no trained scope classifier at {path}; run `lmedit serac train` or set auto_train")
    t = time.perf_counter()
    clf, acc = train_scope_classifier(embedder, hp)
    log.info("serac: scope classifier trained in %.1fs: %s", time.perf_counter() - t, acc)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({**clf.state(), "key": json.dumps(classifier_key(hp, fingerprint)), "train": json.dumps(acc)}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return clf


# --- counterfactual model ---------------------------------------------------------------------------------------
def cf_examples(hp: SeracHparams) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: the edit in context, then its question or its paraphrase."""
    out = []
    for r in _zsre(hp.cf_records):
        ctx = hp.template.format(fact=fact_text(r.prompt, r.target_new))
        out.append((ctx + r.prompt, r.target_new))
        for q in r.rephrase_prompts[:1]:
            out.append((ctx + q, r.target_new))
    return out


def train_counterfactual(model: nn.Module, tok, hp: SeracHparams) -> tuple[nn.Module, dict]:
    """A copy of `model` fine-tuned to answer from an edit given in context. The base model is not touched."""
    device = next(model.parameters()).device
    examples = cf_examples(hp)
    rng = random.Random(hp.seed)
    cf = copy.deepcopy(model)
    cf.train()
    cf.requires_grad_(False)
    if hp.cf_train_layers:
        adapter = ModelAdapter(cf)
        first = max(adapter.n_layers - hp.cf_train_layers, 0)
        trained = [p for layer in range(first, adapter.n_layers) for p in adapter.block(layer).parameters()]
    else:
        trained = list(cf.parameters())
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=hp.cf_lr, weight_decay=0.0)
    steps, losses = 0, []
    try:
        for _ in range(hp.cf_epochs):
            order = list(range(len(examples)))
            rng.shuffle(order)
            for i in range(0, len(order), hp.cf_batch_size):
                chunk = [examples[j] for j in order[i:i + hp.cf_batch_size]]
                batch = batch_prompt_targets(tok, [p for p, _ in chunk], [a for _, a in chunk]).to(device)
                opt.zero_grad()
                logits = cf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
                loss = target_nll(logits, batch).mean()
                if not torch.isfinite(loss):
                    raise EditFailed("serac: non-finite loss while training the counterfactual model")
                loss.backward()
                opt.step()
                losses.append(loss.item())
                steps += 1
                if steps % 10 == 0:
                    log.info("serac: counterfactual model step %d, loss %.4f", steps, sum(losses[-10:]) / 10)
                if hp.cf_max_steps and steps >= hp.cf_max_steps:
                    break
            if hp.cf_max_steps and steps >= hp.cf_max_steps:
                break
    finally:
        cf.eval()
        for p in cf.parameters():
            p.requires_grad_(False)
            p.grad = None
    k = max(1, len(losses) // 10)
    info = {"steps": steps, "examples": len(examples), "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}
    return cf, info


def counterfactual_model(model: nn.Module, tok, hp: SeracHparams, fingerprint: str | None = None,
                         force: bool = False) -> nn.Module:
    """The cached counterfactual model for this base model and config, trained (and cached) if missing."""
    from transformers import AutoModelForCausalLM

    fp = fingerprint or model_fingerprint(model)
    path = cf_path(model, hp, fp)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    if (path / "serac.json").is_file() and not force:
        cf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
        cf.requires_grad_(False)
        return cf
    if not hp.auto_train and not force:
        raise EditFailed(f"serac: no counterfactual model at {path}; run `lmedit serac train` or set auto_train")
    t = time.perf_counter()
    log.info("serac: fine-tuning the counterfactual model on %d ZsRE records (cached at %s)", hp.cf_records, path)
    cf, info = train_counterfactual(model, tok, hp)
    info["seconds"] = round(time.perf_counter() - t, 2)
    log.info("serac: counterfactual model trained: %s", info)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        cf.save_pretrained(str(tmp))
        (tmp / "serac.json").write_text(json.dumps({"key": cf_key(fp, hp), "train": info}, indent=2))
        _publish_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cf


# --- memory and method ------------------------------------------------------------------------------------------
class SeracMemory(InContextMemory):
    """Edits (prompt embedding, text); rows the classifier puts in scope go to the counterfactual model."""

    def __init__(self, tok, hp: SeracHparams, embedder, classifier: ScopeClassifier, cf_model: nn.Module):
        super().__init__(tok, hp)
        self.embedder, self.classifier, self.alt_model = embedder, classifier, cf_model
        self.keys = torch.zeros(0, embedder.dim)
        self.texts: list[str] = []

    def make_entries(self, requests: Sequence[EditRequest]):
        keys = self.embedder.encode([r.prompt for r in requests])
        return [(k, self.hp.template.format(fact=fact_text(r.prompt, r.target_new))) for r, k in zip(requests, keys)]

    def rebuild(self) -> None:
        entries = list(self.entries.values())
        self.keys = torch.stack([k for k, _ in entries]) if entries else torch.zeros(0, self.embedder.dim)
        self.texts = [t for _, t in entries]

    def scope(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(best probability (B,), index of the best-scoring stored edit (B,))."""
        p = self.classifier.prob(self.keys, self.embedder.encode(texts))  # (B, N)
        return p.max(1)

    def choose(self, texts: list[str]) -> list[tuple[str, bool]]:
        best, idx = self.scope(texts)
        return [(self.texts[int(i)], True) if float(p) > self.hp.scope_threshold else ("", False)
                for p, i in zip(best, idx)]


@register
class Serac(InContextMethod):
    name = "serac"
    hparams_cls = SeracHparams
    memory_cls = SeracMemory

    def make_memory(self, model, tok, hp: SeracHparams) -> SeracMemory:
        fp = model_fingerprint(model)
        embedder = self.embedder(hp.embedder, model, tok)
        key = (fp, json.dumps(cf_key(fp, hp)), json.dumps(classifier_key(hp, fp)))
        cached = getattr(self, "_loaded", None)
        if cached is not None and cached[0] == key:  # the same model and config as last time (single mode)
            _, clf, cf = cached
        else:
            self._loaded = None  # let the old counterfactual model go before a new one is loaded
            clf = scope_classifier(embedder, hp, fp)
            cf = counterfactual_model(model, tok, hp, fp)
            self._loaded = (key, clf, cf)
        return SeracMemory(tok, hp, embedder, clf, cf)
