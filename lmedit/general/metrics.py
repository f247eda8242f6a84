"""Classification metrics over predicted / gold option indices (no scikit-learn needed)."""
from __future__ import annotations

import math
from typing import Sequence


def accuracy(preds: Sequence[int], golds: Sequence[int]) -> float:
    if len(preds) != len(golds):
        raise ValueError("preds and golds differ in length")
    if not golds:
        return float("nan")
    return sum(p == g for p, g in zip(preds, golds)) / len(golds)


def _counts(preds, golds, positive):
    tp = sum(p == positive and g == positive for p, g in zip(preds, golds))
    fp = sum(p == positive and g != positive for p, g in zip(preds, golds))
    fn = sum(p != positive and g == positive for p, g in zip(preds, golds))
    tn = len(golds) - tp - fp - fn
    return tp, fp, fn, tn


def f1(preds: Sequence[int], golds: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class; 0.0 when there is no true positive (sklearn's zero_division=0)."""
    if len(preds) != len(golds):
        raise ValueError("preds and golds differ in length")
    tp, fp, fn, _ = _counts(preds, golds, positive)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def mcc(preds: Sequence[int], golds: Sequence[int], positive: int = 1) -> float:
    """Matthews correlation coefficient for a binary task; 0.0 when a marginal is empty."""
    if len(preds) != len(golds):
        raise ValueError("preds and golds differ in length")
    tp, fp, fn, tn = _counts(preds, golds, positive)
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else (tp * tn - fp * fn) / den


def majority_rate(golds: Sequence[int]) -> float:
    """Accuracy of always answering the most frequent gold label in the sample (the chance level to beat)."""
    golds = list(golds)
    if not golds:
        return float("nan")
    return max(golds.count(g) for g in set(golds)) / len(golds)
