import math

import pytest
import torch

from lmedit.evaluate import metrics as M
from lmedit.evaluate.evaluator import summarize


def onehot_logits(token_ids, vocab=10, scale=5.0):
    out = torch.zeros(len(token_ids), vocab)
    out[torch.arange(len(token_ids)), torch.tensor(token_ids)] = scale
    return out


def test_token_accuracy_counts_matching_positions():
    assert M.token_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert M.token_accuracy([5], [5]) == 1.0


def test_token_accuracy_rejects_shape_mismatch_and_empty():
    with pytest.raises(ValueError):
        M.token_accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        M.token_accuracy([], [])


def test_argmax_at_targets_reads_the_positions_before_each_target_token():
    # sequence = 3 prompt tokens + 2 target tokens; logits at positions 2 and 3 predict the targets
    logits = onehot_logits([9, 9, 7, 8, 9])
    assert M.argmax_at_targets(logits, n_prompt=3, n_target=2).tolist() == [7, 8]


def test_agreement_is_locality_against_the_unedited_model():
    assert M.agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert M.agreement([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5


def test_mean_nll_of_a_certain_target_is_near_zero_and_uniform_is_log_v():
    logits = onehot_logits([0, 4, 6], scale=50.0)
    assert M.mean_nll(logits, n_prompt=2, target_ids=[4, 6]) < 1e-6
    uniform = torch.zeros(3, 10)
    assert M.mean_nll(uniform, n_prompt=1, target_ids=[3, 3]) == pytest.approx(math.log(10))


def test_truncate_at_natural_stop_not_at_target_length():
    assert M.truncate_at_stop(" Rome, Italy. It is old") == " Rome, Italy"
    assert M.truncate_at_stop(" Paris\nNext line") == " Paris"
    assert M.truncate_at_stop(" Washington, D.C. is big") == " Washington, D.C"
    assert M.truncate_at_stop(" no stop at all") == " no stop at all"


def test_normalize_answer_and_matches():
    assert M.normalize_answer("  The  Rome!") == "rome"
    assert M.exact_match(" rome.", "Rome") == 1.0
    assert M.exact_match(" Rome, Italy.", "Rome") == 0.0
    assert M.answer_match(" Rome, Italy.", "Rome") == 1.0
    assert M.answer_match(" Romania.", "Rome") == 0.0
    assert M.answer_match(" Paris, France.", "Rome") == 0.0
    assert M.answer_match(" New York City", "New York") == 1.0


def test_long_answers_end_after_as_many_stops_as_the_target_has():
    assert M.truncate_at_stop(" One. Two. Three.", skip=1) == " One. Two"
    assert M.truncate_at_stop(" One. Two", skip=5) == " One. Two"
    assert [M.count_stops(t) for t in ("Rome", "I don't know.", " A.C. Cesena ", "Born 1828. Died 1896.")] == [0, 0, 1, 1]
    gen = " He was born in 1828. He died in 1896. Then nothing"
    target = "He was born in 1828. He died in 1896."
    assert M.answer_match(gen, target) == 0.0  # short rule: the answer is the first sentence only
    assert M.answer_match(gen, target, long=True) == 1.0
    assert M.answer_match(" He was born in 1828. He lived.", target, long=True) == 0.0
    assert M.answer_match(" A.C. Cesena, a club. Yes", "A.C. Cesena", long=True) == 1.0
    assert M.answer_text(" Rome. Paris.", "Rome", long=True) == " Rome"


def test_ngram_entropy_and_fluency():
    assert M.ngram_entropy("a a a a a", 2) == 0.0  # one distinct bigram
    assert M.ngram_entropy("a b c d", 2) == pytest.approx(math.log2(3))  # three distinct bigrams
    repetitive = M.fluency("the cat the cat the cat the cat the cat")
    varied = M.fluency("the quick brown fox jumps over the lazy dog near a river bank")
    assert varied > repetitive
    assert M.fluency("") == 0.0


def test_summarize_ignores_missing_values():
    rows = [{"a": 1.0, "b": None}, {"a": 0.0, "b": 0.5}]
    assert summarize(rows) == {"a": 0.5, "b": 0.5}


def test_counterfact_comparisons_and_harmonic_mean():
    assert M.prefers(0.5, 1.0) == 1.0 and M.prefers(1.0, 0.5) == 0.0
    assert M.prob_gap(0.0, math.log(2)) == pytest.approx(0.5)
    assert M.harmonic_mean([1.0, 1.0, 1.0]) == 1.0
    assert M.harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert M.harmonic_mean([0.0, 1.0]) == 0.0


def test_counterfact_scores_from_observations():
    from lmedit.evaluate.evaluator import counterfact_scores

    tf = {"rewrite": [{"nll": 0.1}], "rewrite_true": [{"nll": 2.0}],
          "rephrase": [{"nll": 3.0}, {"nll": 0.2}], "rephrase_true": [{"nll": 1.0}, {"nll": 1.0}],
          "locality": [{"nll": 0.3}], "locality_new": [{"nll": 0.1}]}
    s = counterfact_scores(tf)
    assert s["cf_es"] == 1.0 and s["cf_ps"] == 0.5 and s["cf_ns"] == 0.0
    assert s["cf_em"] == pytest.approx(math.exp(-0.1) - math.exp(-2.0))


def test_sentiment_edit_success():
    assert M.pooled_logprob([1.0, 3.0], [1, 3]) == pytest.approx(-2.5)  # token-weighted, not per answer
    with pytest.raises(ValueError):
        M.pooled_logprob([], [])
    # prefers the target sentiment and kept it as likely as before: sigmoid of the margin
    assert M.sentiment_edit_success(-1.0, -3.0, -2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert M.sentiment_edit_success(-2.0, -2.0, -2.0) == pytest.approx(0.5)
    # preferred only because the target responses got less likely too: penalised by their loss
    assert M.sentiment_edit_success(-3.0, -5.0, -2.0) == pytest.approx(1 / (1 + math.exp(-2.0)) * math.exp(-1.0))
    assert M.sentiment_edit_success(-1.0, -900.0, -1.0) == pytest.approx(1.0)
    assert M.sentiment_edit_success(-900.0, -1.0, -900.0) == pytest.approx(0.0)
