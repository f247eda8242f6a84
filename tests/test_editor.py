"""The Editor on the real SmolLM2-135M: FT-M works, restore is exact, bad input changes nothing."""
from dataclasses import dataclass

import pytest
import torch

from lmedit import EditRequest, Editor, EvalConfig, InvalidHparams, InvalidRequest
from lmedit.hparams import HParams
from lmedit.methods import EditFailed, UnknownMethod, WeightEditingMethod
from lmedit.methods import registry
from tests.conftest import counterfact_requests
from tests.tiny_models import tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def editor(smol):
    model, tok = smol
    return Editor(model, tok)


def test_ft_m_single_edits_of_ten_counterfact_facts_reach_reliability(editor, state_of, same_state):
    reqs = counterfact_requests(10)
    before = state_of(editor.model)
    result = editor.edit(reqs, method="ft-m", mode="single", eval_config=EvalConfig(generation=True, max_new_tokens=8))
    post, pre = result.summary["post"], result.summary["pre"]
    assert post["tf_reliability"] >= 0.9, post
    assert pre["tf_reliability"] < 0.5
    assert 0.0 <= post["tf_locality"] <= 1.0
    assert same_state(editor.model, before)  # single mode undoes each edit after scoring it, bit-identically


def test_sequential_edits_restore_exactly_and_single_mode_leaves_model_unchanged(editor, state_of, same_state):
    reqs = counterfact_requests(3, start=20)
    before = state_of(editor.model)
    res = editor.edit(reqs, method="ft-l", mode="sequential", hparams={"num_steps": 3},
                      eval_config=EvalConfig(generation=False))
    assert len(res.cases) == 3 and "tf_reliability" in res.cases[0]["post"]
    res.restore()
    assert same_state(editor.model, before)
    res = editor.edit(reqs[:2], method="ft-m", mode="single", hparams={"num_steps": 3},
                      eval_config=EvalConfig(generation=False))
    assert same_state(editor.model, before)
    assert res.cases[1]["post"]["tf_reliability"] is not None


def test_apply_returns_a_handle_without_evaluating(editor, state_of, same_state):
    before = state_of(editor.model)
    handle = editor.apply(counterfact_requests(1), method="ft-m", hparams={"num_steps": 2})
    assert not same_state(editor.model, before)
    handle.restore()
    assert same_state(editor.model, before)


@pytest.mark.parametrize("call, exc, msg", [
    (lambda e: e.edit([EditRequest(prompt="a", target_new="b")], method="rome2"), UnknownMethod, "unknown method"),
    (lambda e: e.edit([EditRequest(prompt="a", target_new="b")], method="ft-m", hparams={"lr": -1}), InvalidHparams, "lr"),
    (lambda e: e.edit([EditRequest(prompt="a", target_new="b")], method="ft-m", hparams={"colour": 1}), InvalidHparams, "unknown"),
    (lambda e: e.edit([EditRequest(prompt="a", target_new="b")], method="ft-m", mode="parallel"), ValueError, "mode"),
    (lambda e: e.edit([], method="ft-m"), InvalidRequest, "no edit requests"),
    (lambda e: e.edit([{"prompt": "a", "target_new": ""}], method="ft-m"), InvalidRequest, "target_new"),
    (lambda e: e.edit([EditRequest(prompt="word " * 9000, target_new="b")], method="ft-m"), InvalidRequest, "context"),
])
def test_bad_input_is_rejected_and_changes_nothing(editor, state_of, same_state, call, exc, msg):
    before = state_of(editor.model)
    with pytest.raises(exc, match=msg):
        call(editor)
    assert same_state(editor.model, before)


@dataclass
class _HP(HParams):
    fail_on_call: int = 1


class _Breaks(WeightEditingMethod):
    """Test method: needs a subject; changes a weight, then fails on its n-th call."""
    name = "test-breaks"
    hparams_cls = _HP
    needs_subject = True
    calls = 0

    def params_to_edit(self, adapter, hp):
        return [adapter.param_name(adapter.mlp_out_path(0))]

    def execute(self, model, tok, adapter, requests, hp):
        type(self).calls += 1
        with torch.no_grad():
            adapter.mlp_out_weight(0).add_(1.0)
        if type(self).calls == hp.fail_on_call:
            raise RuntimeError("method failed half-way")


class _NaN(_Breaks):
    name = "test-nan"

    def execute(self, model, tok, adapter, requests, hp):
        with torch.no_grad():
            adapter.mlp_out_weight(0).fill_(float("nan"))


@pytest.fixture
def breaking_methods():
    registry.register(_Breaks)
    registry.register(_NaN)
    _Breaks.calls = 0
    yield
    registry._METHODS.pop("test-breaks")
    registry._METHODS.pop("test-nan")


def test_failures_half_way_roll_back_everything(breaking_methods, state_of, same_state):
    from transformers import AutoTokenizer  # noqa: F401
    from lmedit.models import load_model

    model, tok = load_model("smollm2-135m")
    editor = Editor(model, tok)
    before = state_of(model)
    reqs = counterfact_requests(3)
    with pytest.raises(InvalidRequest, match="needs a subject"):
        editor.edit([EditRequest(prompt="a b", target_new="c")], method="test-breaks")
    # the second of three sequential edits fails: the first must be undone too
    with pytest.raises(RuntimeError, match="half-way"):
        editor.edit(reqs, method="test-breaks", hparams={"fail_on_call": 2}, evaluate=False)
    assert same_state(model, before)
    with pytest.raises(EditFailed, match="non-finite"):
        editor.edit(reqs[:1], method="test-nan", evaluate=False)
    assert same_state(model, before)


def test_editor_works_on_a_tiny_gpt2(state_of, same_state):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(__import__("lmedit").models.fetch("smollm2-135m")))
    model = tiny_model("gpt2")
    model.resize_token_embeddings(len(tok))
    before = state_of(model)
    res = Editor(model, tok).edit([EditRequest(prompt="The sky is", target_new="green")], method="ft-m",
                                  hparams={"layers": [1], "num_steps": 2}, eval_config=EvalConfig(generation=False))
    assert not same_state(model, before)
    res.restore()
    assert same_state(model, before)


def test_long_answers_get_as_many_new_tokens_as_their_target(smol):
    from lmedit.evaluate.evaluator import observe
    from lmedit.evaluate.scoring import generate

    model, tok = smol
    prompts = ["The capital of France is", "My favourite book is"]
    assert generate(model, tok, prompts, [2, 6]) == generate(model, tok, prompts[:1], 2) + generate(model, tok, prompts[1:], 6)
    target = (" He studied medicine at University College London, where he won three gold medals, and then"
              " practised as a physician in Leeds for many years")
    r = EditRequest(prompt="John Reynolds was a British physician.", target_new=target, subject="John Reynolds")
    short = observe(model, tok, [r], EvalConfig(max_new_tokens=4, counterfact=False))[0]["gen"]["rewrite"][0]
    long = observe(model, tok, [r], EvalConfig(max_new_tokens=4, counterfact=False, answers="long"))[0]["gen"]["rewrite"][0]
    assert len(tok(short, add_special_tokens=False)["input_ids"]) <= 4
    assert long.startswith(short) and len(long) > len(short)  # greedy: the same start, then as far as the target
    with pytest.raises(ValueError, match="answers"):
        EvalConfig(answers="medium")


def test_convsent_edits_get_the_sentiment_edit_success(smol):
    from lmedit.data import load_dataset
    from lmedit.evaluate.evaluator import observe, score

    model, tok = smol
    r = load_dataset("knowedit-convsent-test", limit=1)[0]
    cfg = EvalConfig(generation=False, counterfact=False)
    obs = observe(model, tok, [r], cfg)[0]
    assert len(obs["tf"]["sentiment_target"]) == len(r.meta["pos"]) and len(obs["tf"]["sentiment_other"]) == len(r.meta["neg"])
    pre = score(r, obs)
    assert 0.0 < pre["sent_es"] < 1.0
    assert score(r, obs, reference=obs)["sent_es"] == pytest.approx(pre["sent_es"])  # no change: the pre value
    plain = EditRequest(prompt=r.prompt, target_new=r.target_new, subject=r.subject)
    assert "sent_es" not in score(plain, observe(model, tok, [plain], cfg)[0])
