"""Per-request evaluation of an edit, both teacher-forced and generation-based.

Metric names carry their protocol:
  tf_*   teacher-forced token accuracy (EasyEdit's rewrite_acc / rephrase_acc / locality / portability)
  gen_*  greedy generation cut at the first newline or sentence end (not at the target length);
         a hit when the normalised answer is the target or starts with it at a word boundary.
         With long answers (EvalConfig.answers="long": passages, chat responses) a prompt gets at
         least as many new tokens as its expected answer, and the cut is the first stop after as
         many as the expected answer has itself.
  fluency  n-gram entropy of the greedy continuation of the edit prompt
Locality compares the edited model with the unedited one (not with the dataset's answer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..requests import EditRequest
from ..tokens import encode_target
from . import metrics as M
from .scoring import generate, teacher_forced

ANSWER_KINDS = ("short", "long")

METRIC_DOCS = {
    "tf_reliability": "teacher-forced token accuracy of target_new after the edit prompt",
    "tf_generalization": "teacher-forced token accuracy of target_new after each rephrase (mean)",
    "tf_locality": "fraction of locality-answer argmax tokens unchanged by the edit (pre vs post)",
    "tf_portability": "teacher-forced token accuracy of each portability answer (mean)",
    "gen_reliability": "greedy generation from the edit prompt, cut at natural stop, normalised answer is / starts with target_new",
    "gen_generalization": "as gen_reliability, for each rephrase (mean)",
    "gen_locality": "greedy answer to each locality prompt unchanged by the edit (normalised, mean)",
    "gen_portability": "greedy answer to each portability prompt matches its answer (mean)",
    "fluency": "bigram/trigram entropy of the greedy continuation of the edit prompt",
    "cf_es": "CounterFact efficacy: P(target_new) > P(target_true) after the edit prompt (mean-token NLL)",
    "cf_ps": "CounterFact paraphrase: the same on each rephrase (mean)",
    "cf_ns": "CounterFact neighbourhood: P(locality answer) > P(target_new) on each locality prompt (mean)",
    "cf_em": "efficacy magnitude: P(target_new) - P(target_true), P = exp(-mean token NLL)",
    "cf_pm": "paraphrase magnitude (mean over rephrases)",
    "cf_nm": "neighbourhood magnitude: P(locality answer) - P(target_new) (mean)",
    "cf_score": "harmonic mean of cf_es, cf_ps, cf_ns (summary only)",
    "sent_es": "ConvSent edit success (SERAC/MEND): sigmoid(mean token log-prob of the target sentiment's responses - "
               "of the other's) * min(1, exp(their gain over the unedited model)), after the edit prompt",
}


@dataclass
class EvalConfig:
    generation: bool = True  # also run the generation-based metrics
    max_new_tokens: int = 24
    batch_size: int = 32  # teacher-forced rows per forward
    gen_batch_size: int = 128  # generation rows per batch (decoding steps cost about the same for 32 or 128 rows)
    counterfact: bool = True  # also score target_true for CounterFact ES/PS/NS when a request has one
    # "short": answers of a few words (greedy, max_new_tokens, the answer ends at the first stop);
    # "long": passages and chat responses (WikiBio, ConvSent): a prompt gets at least as many new tokens
    # as its expected answer has, and the answer ends at the first stop after as many as it has itself
    answers: str = "short"

    def __post_init__(self):
        if self.answers not in ANSWER_KINDS:
            raise ValueError(f"answers must be one of {ANSWER_KINDS}, got {self.answers!r}")


def observe(model, tok, requests: Sequence[EditRequest], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Everything the metrics need from one model state, for every request, in batched calls."""
    tf_queries: list[tuple[int, str, int, str, str]] = []  # (request, kind, index, prompt, target)
    gen_queries: list[tuple[int, str, int, str, str]] = []  # (request, kind, index, prompt, expected answer)
    for i, r in enumerate(requests):
        tf_queries.append((i, "rewrite", 0, r.prompt, r.target_new))
        gen_queries.append((i, "rewrite", 0, r.prompt, r.target_new))
        for j, p in enumerate(r.rephrase_prompts):
            tf_queries.append((i, "rephrase", j, p, r.target_new))
            gen_queries.append((i, "rephrase", j, p, r.target_new))
        for kind, pairs in (("locality", r.locality), ("portability", r.portability)):
            for j, pa in enumerate(pairs):
                tf_queries.append((i, kind, j, pa.prompt, pa.answer))
                gen_queries.append((i, kind, j, pa.prompt, pa.answer))
        if cfg.counterfact and r.target_true:
            tf_queries.append((i, "rewrite_true", 0, r.prompt, r.target_true))
            tf_queries += [(i, "rephrase_true", j, p, r.target_true) for j, p in enumerate(r.rephrase_prompts)]
            tf_queries += [(i, "locality_new", j, pa.prompt, r.target_new) for j, pa in enumerate(r.locality)]
        sentiment = sentiment_responses(r)
        if sentiment is not None:
            for kind, responses in zip(("sentiment_target", "sentiment_other"), sentiment):
                tf_queries += [(i, kind, j, r.prompt, t) for j, t in enumerate(responses)]
    obs: list[dict[str, Any]] = [{"tf": {}, "gen": {}} for _ in requests]
    scores = teacher_forced(model, tok, [q[3] for q in tf_queries], [q[4] for q in tf_queries], cfg.batch_size)
    for (i, kind, j, _, _), s in zip(tf_queries, scores):
        obs[i]["tf"].setdefault(kind, []).append({"pred": s.pred_ids, "target": s.target_ids, "nll": s.nll})
    if cfg.generation:
        budget: int | list[int] = cfg.max_new_tokens
        if cfg.answers == "long":
            budget = [max(cfg.max_new_tokens, len(encode_target(tok, q[3], q[4]))) for q in gen_queries]
        texts = generate(model, tok, [q[3] for q in gen_queries], budget, cfg.gen_batch_size)
        for (i, kind, j, _, _), t in zip(gen_queries, texts):
            obs[i]["gen"].setdefault(kind, []).append(t)
    return obs


def score(request: EditRequest, obs: dict[str, Any], reference: dict[str, Any] | None = None,
          answers: str = "short") -> dict[str, float | None]:
    """Metrics for one request from its observation; `reference` is the unedited model's (for locality);
    `answers` as in EvalConfig (where a generated answer ends)."""
    tf, gen = obs["tf"], obs["gen"]
    long = answers == "long"
    out: dict[str, float | None] = {
        "tf_reliability": M.token_accuracy(tf["rewrite"][0]["pred"], tf["rewrite"][0]["target"]),
        "tf_generalization": M.mean([M.token_accuracy(x["pred"], x["target"]) for x in tf.get("rephrase", [])]),
        "tf_portability": M.mean([M.token_accuracy(x["pred"], x["target"]) for x in tf.get("portability", [])]),
    }
    if reference is not None and request.locality:
        out["tf_locality"] = M.mean([M.agreement(a["pred"], b["pred"])
                                     for a, b in zip(reference["tf"]["locality"], tf["locality"])])
    if "rewrite_true" in tf:
        out.update(counterfact_scores(tf))
    if "sentiment_target" in tf and "sentiment_other" in tf:
        def lp(entries):
            return M.pooled_logprob([e["nll"] for e in entries], [len(e["target"]) for e in entries])
        before = reference["tf"]["sentiment_target"] if reference is not None else tf["sentiment_target"]
        out["sent_es"] = M.sentiment_edit_success(lp(tf["sentiment_target"]), lp(tf["sentiment_other"]), lp(before))
    if gen:
        out["gen_reliability"] = M.answer_match(gen["rewrite"][0], request.target_new, long)
        out["gen_generalization"] = M.mean([M.answer_match(g, request.target_new, long)
                                            for g in gen.get("rephrase", [])])
        out["gen_portability"] = M.mean([M.answer_match(g, pa.answer, long) for g, pa in
                                         zip(gen.get("portability", []), request.portability)])
        if reference is not None and request.locality and reference["gen"]:
            out["gen_locality"] = M.mean([
                float(M.normalize_answer(M.answer_text(a, pa.answer, long))
                      == M.normalize_answer(M.answer_text(b, pa.answer, long)))
                for a, b, pa in zip(reference["gen"]["locality"], gen["locality"], request.locality)])
        out["fluency"] = M.fluency(request.prompt + gen["rewrite"][0])
    return out


def sentiment_responses(request: EditRequest) -> tuple[list[str], list[str]] | None:
    """(responses of the target sentiment, of the other) for a sentiment edit (ConvSent: meta "target_sentiment"
    and the "pos"/"neg" response lists), else None."""
    m = request.meta or {}
    want = m.get("target_sentiment")
    if want not in ("pos", "neg") or not m.get("pos") or not m.get("neg"):
        return None
    return list(m[want]), list(m["neg" if want == "pos" else "pos"])


def counterfact_scores(tf: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """ROME/MEMIT-style scores from mean-token NLLs of target_new vs target_true."""
    def pairs(new_kind, true_kind):
        return [(a["nll"], b["nll"]) for a, b in zip(tf.get(new_kind, []), tf.get(true_kind, []))]

    rew = pairs("rewrite", "rewrite_true")
    reph = pairs("rephrase", "rephrase_true")
    neigh = pairs("locality", "locality_new")  # (answer nll, target_new nll)
    return {
        "cf_es": M.mean([M.prefers(n, t) for n, t in rew]),
        "cf_ps": M.mean([M.prefers(n, t) for n, t in reph]),
        "cf_ns": M.mean([M.prefers(a, n) for a, n in neigh]),
        "cf_em": M.mean([M.prob_gap(n, t) for n, t in rew]),
        "cf_pm": M.mean([M.prob_gap(n, t) for n, t in reph]),
        "cf_nm": M.mean([M.prob_gap(a, n) for a, n in neigh]),
    }


def summarize(rows: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {k: M.mean([r.get(k) for r in rows]) for k in keys}
    if all(out.get(k) is not None for k in ("cf_es", "cf_ps", "cf_ns")):
        out["cf_score"] = M.harmonic_mean([out["cf_es"], out["cf_ps"], out["cf_ns"]])
    return out
