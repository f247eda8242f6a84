"""General-ability evaluation: task definitions on the real staged files, metrics, sampling, CLI, real model."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lmedit.cli import app
from lmedit.general import (GeneralDataError, TaskSpec, UnknownTask, evaluate_general, extract_number, f1,
                            get_task, list_tasks, majority_rate, mcc)
from lmedit.general.metrics import accuracy
from lmedit.paths import shared_data_dir

DATA = shared_data_dir() / "general_eval"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"general_eval data not found at {DATA}")
ALL = ["sst2", "sentiment_analysis", "rte", "nli", "mrpc", "cola", "boolq", "mmlu", "dialogue", "gsm8k"]


def first(name):
    return get_task(name).load()[0]


def test_list_tasks_and_unknown_name_suggests():
    assert list_tasks() == ALL
    with pytest.raises(UnknownTask, match=r"Did you mean 'sst2'.*Available: sst2, sentiment_analysis"):
        get_task("sst")
    with pytest.raises(UnknownTask, match="Available"):
        evaluate_general(None, None, tasks="sst2,nope")  # fails before touching the model


def test_spec_validation():
    with pytest.raises(ValueError, match="unknown metric"):
        TaskSpec(name="x", file="x.jsonl", version=1, kind="choice", template="{a}", options=(" a", " b"),
                 label_field="l", label_map={"0": 0}, metrics=("bleu",))
    with pytest.raises(ValueError, match="outside"):
        TaskSpec(name="x", file="x.jsonl", version=1, kind="choice", template="{a}", options=(" a", " b"),
                 label_field="l", label_map={"0": 2})
    with pytest.raises(ValueError, match="f1/mcc"):
        TaskSpec(name="x", file="x.jsonl", version=1, kind="choice", template="{a}", options=(" a", " b"),
                 label_field="l", label_map={"0": 0}, metrics=("accuracy", "f1"))


@needs_data
@pytest.mark.parametrize("task, rec, option", [
    ("sst2", {"label": 1}, " positive"), ("sst2", {"label": 0}, " negative"),
    ("sentiment_analysis", {"label": "0"}, " negative"), ("sentiment_analysis", {"label": "1"}, " positive"),
    ("rte", {"label": 0}, " yes"), ("rte", {"label": 1}, " no"),  # GLUE RTE: 0 = entailment
    ("nli", {"label": "entailment"}, " yes"), ("nli", {"label": "not_entailment"}, " no"),
    ("mrpc", {"label": 1}, " yes"), ("cola", {"label": 0}, " no"),
    ("boolq", {"classification": "True"}, " yes"), ("boolq", {"classification": "False"}, " no"),
    ("mmlu", {"answer": 2}, " C"),
])
def test_label_mapping(task, rec, option):
    s = get_task(task)
    assert s.options[s.label(rec)] == option


@needs_data
def test_label_mapping_dialogue_and_bad_label():
    s = get_task("dialogue")
    r = first("dialogue")
    assert r["answers"] == "B" and s.label(r) == 1
    assert s.options_for(r)[1] == " " + r["options"][1].strip()
    with pytest.raises(GeneralDataError, match="not one of"):
        get_task("nli").label({"label": "contradiction"})


@needs_data
@pytest.mark.parametrize("task", [t for t in ALL if t != "gsm8k"])
def test_every_record_has_a_valid_label(task):
    s = get_task(task)
    labels = [s.label(r) for r in s.load()]
    assert all(0 <= g < len(s.options_for(r)) for g, r in zip(labels, s.load()))
    assert len(set(labels)) == (2 if s.options and len(s.options) == 2 else 4)


@pytest.mark.parametrize("text, num", [
    ("The answer is 1,234.", "1234"), ("it falls by -3.5 degrees", "-3.5"), ("16 - 3 - 4 = 9 eggs\nSo $18", "18"),
    ("costs $2.50 then 7.0", "7"), ("no digits here", None), ("1,000,000 people, ", "1000000"),
    ("x = 3.", "3"), ("3.50", "3.5"),
])
def test_extract_number(text, num):
    assert extract_number(text) == num


@needs_data
def test_gsm8k_reference_and_prompt():
    s = get_task("gsm8k")
    r = first("gsm8k")
    assert s.reference(r) == "18"
    assert s.render(r) == "Question: " + r["question"] + "\nAnswer:"
    assert all(s.reference(x) == extract_number(x["answer"].split("####")[-1]) for x in s.load()[:200])


def test_f1_mcc_accuracy_by_hand():
    golds = [1, 1, 1, 0, 0, 0, 1, 0]
    preds = [1, 1, 0, 0, 1, 0, 1, 0]  # tp=3 fp=1 fn=1 tn=3
    assert accuracy(preds, golds) == 6 / 8
    assert f1(preds, golds, positive=1) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert f1(preds, golds, positive=0) == pytest.approx(0.75)
    assert mcc(preds, golds) == pytest.approx((3 * 3 - 1 * 1) / 16)
    assert f1([0, 0], [1, 1]) == 0.0 and mcc([1, 1], [1, 0]) == 0.0
    assert mcc([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert majority_rate([0, 0, 1]) == pytest.approx(2 / 3)


@needs_data
def test_sampling_is_deterministic_nested_and_seeded():
    s = get_task("sst2")
    a, b = s.sample(100, seed=0), s.sample(100, seed=0)
    assert a == b and len(set(a)) == 100
    assert s.sample(50, seed=0) == a[:50]
    assert s.sample(100, seed=1) != a
    assert sorted(s.sample(None)) == list(range(856)) and len(s.sample(10_000)) == 856
    assert get_task("cola").sample(100, seed=0) != get_task("sst2").sample(100, seed=0)


@needs_data
def test_prompt_rendering_first_records():
    r = {t: get_task(t).render(first(t)) for t in ALL}
    assert r["sst2"] == ("Review: an exhilarating futuristic thriller-noir , minority report twists the best of technology"
                         " around a gripping story , delivering a riveting , pulse intensifying escapist adventure of "
                         "the first order\nSentiment (positive or negative):")
    assert r["rte"] == ("Premise: The town is also home to the Dalai Lama and to more than 10,000 Tibetans living in "
                        "exile.\nHypothesis: The Dalai Lama has been living in exile since 10,000.\n"
                        "Does the premise entail the hypothesis (yes or no)?\nAnswer:")
    assert r["cola"] == ("Sentence: The evidence assembled by the prosecution convinced the jury.\n"
                         "Is this sentence grammatically correct (yes or no)?\nAnswer:")
    assert r["mmlu"] == ("The following is a multiple choice question about elementary mathematics.\n\n"
                         "Which expression is equivalent to 4 x 9?\nA. (4x 4) + (4x5)\nB. (4+4) x (4+5)\n"
                         "C. (4+4)+(4+5)\nD. (4x 4) x (4x5)\nAnswer:")
    assert r["boolq"].startswith("Timothy Donell Brown (born July 22, 1966)")
    assert r["boolq"].endswith("Hall of Fame.\nQuestion: is tim brown in the hall of fame?\nAnswer (yes or no):")
    assert r["mrpc"].startswith("Sentence 1: Federal regulators") and "\nSentence 2: Federal regulators have changed" \
        in r["mrpc"] and r["mrpc"].endswith("(yes or no)?\nAnswer:")
    assert r["nli"].startswith("Premise: Turkey is unlikely") and "Hypothesis: U.S. to use Turkish military bases." \
        in r["nli"]
    assert r["sentiment_analysis"].startswith("Review: looking aristocratic")
    assert r["dialogue"].startswith("Conversation: f : hi how are you doing ?") and r["dialogue"].endswith(
        "restaurant in the future .\nNext turn:")
    assert all(p.strip() and "{question}" not in p and "{sentence" not in p for p in r.values())


def test_missing_data_file_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LMEDIT_DATA", str(tmp_path))
    with pytest.raises(GeneralDataError, match=str(tmp_path / "general_eval" / "sst2.jsonl")):
        get_task("sst2").load()
    with pytest.raises(GeneralDataError, match="not found"):
        evaluate_general(None, None, tasks=["sst2"])


def test_cli_list_and_bad_task():
    runner = CliRunner()
    r = runner.invoke(app, ["general", "list"])
    assert r.exit_code == 0 and "mmlu" in r.output and "gsm8k" in r.output
    r = runner.invoke(app, ["general", "run", "--tasks", "sst2,mmmlu"])
    assert r.exit_code == 2 and "Did you mean 'mmlu'" in r.output
    r = runner.invoke(app, ["general", "run", "--task-n", "gsm8k"])
    assert r.exit_code == 2 and "task=N" in r.output


@pytest.mark.slow
@needs_data
def test_real_model_small_run(smol):
    from lmedit.evaluate.scoring import loglikelihood, teacher_forced

    torch.set_num_threads(1)
    model, tok = smol
    res = evaluate_general(model, tok, tasks=("sst2", "rte", "cola", "mmlu", "gsm8k"), n=8,
                           n_per_task={"gsm8k": 2}, max_new_tokens=12, batch_size=8, return_predictions=True)
    assert list(res) == ["sst2", "rte", "cola", "mmlu", "gsm8k"]
    for name, r in res.items():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["version"] == get_task(name).version
        assert r["n"] == (2 if name == "gsm8k" else 8)
        assert [p["index"] for p in r["predictions"]] == get_task(name).sample(r["n"], seed=0)
        for k in ("f1", "mcc"):
            if k in r:
                assert -1.0 <= r[k] <= 1.0
    assert "f1" in res["sst2"] and "mcc" in res["cola"] and "f1" not in res["mmlu"]
    assert all(isinstance(p["generation"], str) for p in res["gsm8k"]["predictions"])
    json.dumps(res)  # JSON-serialisable as is

    # batched scoring == one-at-a-time scoring == teacher_forced's mean NLL
    s = get_task("rte")
    recs = [s.load()[i] for i in s.sample(3)]
    prompts = [s.render(r) for r in recs for _ in s.options] + ["Q: 2+2?\nA:"]
    targets = [o for _ in recs for o in s.options] + [" four, of course"]
    batched = loglikelihood(model, tok, prompts, targets, batch_size=16)
    single = [loglikelihood(model, tok, [p], [t], batch_size=1)[0] for p, t in zip(prompts, targets)]
    tf = teacher_forced(model, tok, prompts, targets, batch_size=1)
    for b, u, t in zip(batched, single, tf):
        assert b.n_tokens == u.n_tokens == len(t.target_ids)
        assert b.logprob == pytest.approx(u.logprob, abs=1e-3)
        assert b.logprob == pytest.approx(-t.nll * len(t.target_ids), abs=1e-3)
    # and the record-level scores evaluate_general reports do not depend on the batch size
    one = evaluate_general(model, tok, tasks="sst2", n=3, batch_size=1, return_predictions=True)["sst2"]
    assert [p["prediction"] for p in one["predictions"]] == [p["prediction"] for p in res["sst2"]["predictions"][:3]]
    for p, q in zip(one["predictions"], res["sst2"]["predictions"]):
        assert p["scores"] == pytest.approx(q["scores"], abs=1e-3)
