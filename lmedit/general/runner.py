"""evaluate_general: score a model on the general-ability tasks (before/after editing, paired samples)."""
from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

from ..evaluate.scoring import generate, loglikelihood
from .metrics import accuracy, f1, majority_rate, mcc
from .tasks import TaskSpec, extract_number, get_task, list_tasks

log = logging.getLogger(__name__)


def _task_names(tasks: str | Iterable[str] | None) -> list[str]:
    if tasks is None:
        return list_tasks()
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    names = [t.strip() for t in tasks if t.strip()]
    if not names:
        raise ValueError(f"no tasks given; available: {', '.join(list_tasks())}")
    for t in names:
        get_task(t)  # unknown names fail before any model work
    return list(dict.fromkeys(names))


def _choice_task(model, tok, spec: TaskSpec, recs: list[dict], idxs: list[int], batch_size: int,
                 normalize: bool | None, predictions: bool) -> dict:
    norm = spec.normalize if normalize is None else normalize
    prompts = [spec.render(r) for r in recs]
    options = [spec.options_for(r) for r in recs]
    golds = [spec.label(r) for r in recs]
    for r, o, g in zip(idxs, options, golds):
        if not 0 <= g < len(o):
            raise ValueError(f"task {spec.name}, record {r}: label index {g} but {len(o)} options")
    pairs = [(j, k) for j, opts in enumerate(options) for k in range(len(opts))]
    # one call for the whole task: loglikelihood sorts by length, batches and shares rows between options
    scored = loglikelihood(model, tok, [prompts[j] for j, _ in pairs], [options[j][k] for j, k in pairs],
                           batch_size=batch_size)
    per_rec: list[list[float]] = [[0.0] * len(o) for o in options]
    for (j, k), s in zip(pairs, scored):
        per_rec[j][k] = s.mean_logprob if norm else s.logprob
    preds = [max(range(len(sc)), key=lambda k: sc[k]) for sc in per_rec]
    res = {"accuracy": accuracy(preds, golds)}
    if "f1" in spec.metrics:
        res["f1"] = f1(preds, golds, spec.positive)
    if "mcc" in spec.metrics:
        res["mcc"] = mcc(preds, golds, spec.positive)
    res["majority"] = majority_rate(golds)
    res["normalize"] = norm
    if predictions:
        res["predictions"] = [{"index": i, "prompt": p, "label": g, "prediction": pr, "correct": pr == g,
                               "scores": sc} for i, p, g, pr, sc in zip(idxs, prompts, golds, preds, per_rec)]
    return res


def _generate_task(model, tok, spec: TaskSpec, recs: list[dict], idxs: list[int], batch_size: int,
                   max_new_tokens: int, predictions: bool) -> dict:
    prompts = [spec.render(r) for r in recs]
    refs = [spec.reference(r) for r in recs]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    gens_sorted = generate(model, tok, [prompts[i] for i in order], max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    gens = [""] * len(prompts)
    for i, g in zip(order, gens_sorted):
        gens[i] = g
    cut = []
    for g in gens:
        for s in spec.stop:
            g = g.split(s, 1)[0]
        cut.append(g)
    preds = [extract_number(g) for g in cut]
    correct = [p is not None and p == r for p, r in zip(preds, refs)]
    res = {"accuracy": sum(correct) / len(correct) if correct else float("nan"), "max_new_tokens": max_new_tokens}
    if predictions:
        res["predictions"] = [{"index": i, "prompt": p, "reference": r, "prediction": pr, "correct": c,
                               "generation": g} for i, p, r, pr, c, g in zip(idxs, prompts, refs, preds, correct, cut)]
    return res


def evaluate_general(model, tok, tasks: str | Sequence[str] | None = None, n: int | None = 100, seed: int = 0,
                     batch_size: int = 16, max_new_tokens: int = 128, normalize: bool | None = None,
                     return_predictions: bool = False, n_per_task: dict[str, int] | None = None) -> dict[str, dict]:
    """Score `model` on general-ability tasks; returns {task: {"accuracy", ["f1"], ["mcc"], "n", "version", ...}}.

    tasks: names or a comma-separated string (default: every task, see list_tasks()).
    n: records per task, a seeded deterministic sample (the same for every call with the same seed, and nested:
       the first 50 of n=100 are the n=50 sample), so before/after-edit numbers are paired. None or <= 0: all.
    n_per_task: overrides n for some tasks, e.g. {"gsm8k": 20}.
    batch_size: prompt+option sequences per forward pass (choice tasks) / prompts per generate call (gsm8k).
    normalize: override the tasks' scoring rule (False: summed option log-prob, True: mean per option token).
    return_predictions: add per-record predictions (index in the file, prompt, gold, prediction, scores).
    Choice tasks also report "majority" (the most frequent gold label's share of the sample: the chance level).
    """
    names = _task_names(tasks)
    specs = [get_task(t) for t in names]
    for s in specs:
        s.load()  # a missing data file fails before any model work, naming the path
    was_training = model.training
    model.eval()
    out: dict[str, dict] = {}
    try:
        for spec in specs:
            k = (n_per_task or {}).get(spec.name, n)
            idxs = spec.sample(k, seed)
            data = spec.load()
            recs = [data[i] for i in idxs]
            t0 = time.perf_counter()
            if spec.kind == "choice":
                res = _choice_task(model, tok, spec, recs, idxs, batch_size, normalize, return_predictions)
            else:
                res = _generate_task(model, tok, spec, recs, idxs, batch_size, max_new_tokens, return_predictions)
            res.update(n=len(recs), version=spec.version, seed=seed, seconds=round(time.perf_counter() - t0, 2))
            preds = res.pop("predictions", None)
            if preds is not None:
                res["predictions"] = preds  # last, after the metrics and bookkeeping
            out[spec.name] = res
            log.info("general %s: accuracy %.3f (n=%d, %.1fs)", spec.name, res["accuracy"], len(recs), res["seconds"])
    finally:
        model.train(was_training)
    return out
