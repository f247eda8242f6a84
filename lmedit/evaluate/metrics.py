"""Metrics as pure functions over tokens, logits and strings. No model in here."""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence

import torch


def token_accuracy(pred_ids: Sequence[int] | torch.Tensor, target_ids: Sequence[int] | torch.Tensor) -> float:
    """Teacher-forced accuracy: fraction of target positions whose argmax equals the target token."""
    pred, tgt = torch.as_tensor(pred_ids), torch.as_tensor(target_ids)
    if pred.shape != tgt.shape or tgt.numel() == 0:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(tgt.shape)} must be equal, non-empty")
    return (pred == tgt).float().mean().item()


def argmax_at_targets(logits: torch.Tensor, n_prompt: int, n_target: int) -> torch.Tensor:
    """Argmax tokens at the positions that predict the target (logits: (T, V) of prompt+target)."""
    return logits[n_prompt - 1: n_prompt - 1 + n_target].argmax(-1)


def agreement(pre_ids: Sequence[int] | torch.Tensor, post_ids: Sequence[int] | torch.Tensor) -> float:
    """EasyEdit locality: fraction of positions whose argmax token is unchanged by the edit."""
    return token_accuracy(post_ids, pre_ids)


def mean_nll(logits: torch.Tensor, n_prompt: int, target_ids: Sequence[int]) -> float:
    """Mean negative log-likelihood of the target tokens (CounterFact compares these)."""
    tgt = torch.as_tensor(target_ids)
    logp = torch.log_softmax(logits[n_prompt - 1: n_prompt - 1 + len(tgt)].float(), -1)
    return -logp.gather(-1, tgt.unsqueeze(-1)).mean().item()


def prefers(nll_a: float, nll_b: float) -> float:
    """1.0 if completion a is more likely than b (lower mean-token NLL): CounterFact's ES/PS/NS test."""
    return float(nll_a < nll_b)


def prob_gap(nll_a: float, nll_b: float) -> float:
    """P(a) - P(b) with P = exp(-mean token NLL): CounterFact's magnitude scores."""
    return math.exp(-nll_a) - math.exp(-nll_b)


def harmonic_mean(xs: Sequence[float]) -> float:
    if any(x <= 0 for x in xs):
        return 0.0
    return len(xs) / sum(1 / x for x in xs)


def pooled_logprob(nlls: Sequence[float], lengths: Sequence[int]) -> float:
    """Mean log-probability per token over several answers, from each one's mean token NLL and length."""
    total = sum(lengths)
    if total == 0:
        raise ValueError("no tokens to pool")
    return -sum(nll * n for nll, n in zip(nlls, lengths)) / total


def sentiment_edit_success(lp_target: float, lp_other: float, lp_target_before: float) -> float:
    """ConvSent edit success as SERAC and MEND define it: sigmoid(lp_target - lp_other) * min(1, exp(lp_target -
    lp_target_before)), lp = mean token log-probability of the responses of one sentiment after the edit prompt.
    The first factor: the edited model prefers responses of the target sentiment to the others; the second:
    it did not get there by making the target responses themselves less likely than before."""
    x = lp_target - lp_other
    prefers = 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))
    return prefers * math.exp(min(0.0, lp_target - lp_target_before))


# --- generation-based ------------------------------------------------------------------------

_STOP = re.compile(r"\n|\.(?=\s|$)")


def truncate_at_stop(text: str, skip: int = 0) -> str:
    """The answer part of a free generation: up to the first newline or sentence-ending period
    (with `skip`, the one after that many of them: a long answer has stops of its own)."""
    for i, m in enumerate(_STOP.finditer(text)):
        if i == skip:
            return text[: m.start()]
    return text


def count_stops(answer: str) -> int:
    """Stops (see truncate_at_stop) inside an expected answer, not counting a final period:
    "A.C. Cesena" and "He was born in 1828. He died." have 1, "Rome" and "I don't know." none."""
    a = answer.strip()
    return len(_STOP.findall(a[:-1] if a.endswith(".") else a))


def answer_text(generated: str, expected: str, long: bool = False) -> str:
    """The part of a generation that is compared with `expected`: cut at the first stop (short
    answers: the WILD-style rule) or, for long answers (passages, chat responses), at the first stop
    after as many as the expected answer has itself."""
    return truncate_at_stop(generated, count_stops(expected) if long else 0)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze whitespace (SQuAD-style)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(generated: str, target: str) -> float:
    """1.0 if the generation, cut at its natural stop, equals the target after normalisation."""
    return float(normalize_answer(truncate_at_stop(generated)) == normalize_answer(target))


def answer_match(generated: str, target: str, long: bool = False) -> float:
    """1.0 if the answer (generation cut at its natural stop, see answer_text; normalised) is the
    target or starts with it at a word boundary: " Rome, Italy." matches "Rome"; " Romania" and
    " Paris" do not."""
    answer, tgt = normalize_answer(answer_text(generated, target, long)), normalize_answer(target)
    if not tgt:
        return 0.0
    return float(answer == tgt or answer.startswith(tgt + " "))


# --- fluency ---------------------------------------------------------------------------------

def ngram_entropy(text: str, n: int) -> float:
    """Entropy (bits) of the n-gram distribution of the words of `text`; 0 if there are none."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in grams.values())


def fluency(text: str) -> float:
    """ROME's generation entropy: weighted mean of bigram (2/3) and trigram (4/3) entropies."""
    return (2 / 3 * ngram_entropy(text, 2) + 4 / 3 * ngram_entropy(text, 3)) / 2


def mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
