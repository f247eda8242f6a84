"""In-context / memory editors (IKE, MemPrompt, SERAC) and the hooks they share (`methods/_incontext.py`).

Unit tier (tiny random models): the hooks give exactly what the model gives on the concatenated token sequence
(context + row) - teacher-forced logits with right padding, logits_to_keep, the loss, left-padded KV-cached
generation, BOS handling - and the alternative-model routing replaces only the routed rows.
Integration tier (the real SmolLM2-135M, `slow`): reliability after sequential edits, removal of one edit out of
three, exact restore (state_dict, hooks, outputs), MemPrompt/SERAC leave out-of-scope inputs untouched, the
evaluator's own scoring through the hooks equals the model on the concatenated tokens, SERAC's on-disk cache + CLI.
"""
import pytest
import torch
from typer.testing import CliRunner

from lmedit import Editor, EvalConfig
from lmedit.evaluate.evaluator import observe, score
from lmedit.evaluate.scoring import generate, teacher_forced
from lmedit.hparams import InvalidHparams
from lmedit.methods import get_method
from lmedit.methods._incontext import ContextHooks, Route
from lmedit.tokens import encode_prompt, encode_target
from tests.conftest import counterfact_requests
from tests.tiny_models import tiny_model

NO_GEN = EvalConfig(generation=False, counterfact=False)
BOS = 1


# --- unit: the hooks on tiny models ----------------------------------------------------------------------------
def _batch(rows, side, pad=0):
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad)
    att = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        ids[b, cols] = torch.tensor(r)
        att[b, cols] = 1
    return ids, att


def _concat(row, ctx, bos):
    """The token sequence the hooks must be equivalent to, and where the row's own tokens start in it."""
    if ctx and bos is not None and row[0] == bos:
        return [bos] + ctx + row[1:], len(ctx)  # the row's BOS stays first, the context goes after it
    return ctx + row, len(ctx)


def _reference_logits(model, row, ctx, bos):
    """(len(row), V) logits of the model on the concatenation, at the row's own positions."""
    full, n = _concat(row, ctx, bos)
    lg = model(input_ids=torch.tensor([full])).logits[0]
    if ctx and bos is not None and row[0] == bos:
        return torch.cat([lg[n:n + 1], lg[n + 1:]])  # the BOS column predicts the first token after the context
    return lg[n:]


CONTEXTS = {0: [5, 6, 7], 1: [], 2: [9, 10, 11, 12, 13], 3: [20]}
# context by row length % 4: rows 0 and 4 get 3 tokens, row 1 none, row 2 five, row 3 one
ROWS = [[BOS, 30, 31, 32], [BOS, 40, 41, 42, 43], [50, 51], [BOS, 60, 61, 62, 63, 64, 65], [70, 71, 72, 73, 74, 75, 76, 77]]


def _router(rows):
    return [Route(list(CONTEXTS[len(r) % 4])) for r in rows]


@pytest.mark.parametrize("family, bos", [("llama", BOS), ("llama", None), ("qwen2", None), ("gpt2", None),
                                         ("gemma3_text", BOS)])
@torch.no_grad()
def test_hooks_equal_the_model_on_the_concatenated_tokens(family, bos):
    model = tiny_model(family)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    ref = [_reference_logits(model, r, CONTEXTS[len(r) % 4], bos) for r in ROWS]
    hooks = ContextHooks(model, _router, bos_id=bos, pad_id=0)
    try:
        assert ContextHooks.find(model) is hooks
        # teacher-forced: right padding, no position ids (the evaluator's call)
        ids, att = _batch(ROWS, "right")
        out = model(input_ids=ids, attention_mask=att)
        assert out.logits.shape[:2] == ids.shape
        for b, r in enumerate(ROWS):
            torch.testing.assert_close(out.logits[b, :len(r)], ref[b], atol=2e-5, rtol=1e-4)
        # the loss is the caller's: computed from the returned logits and their labels
        labels = ids.masked_fill(att == 0, -100)
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        expect = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        torch.testing.assert_close(loss, expect)
        # left padding with position ids, logits_to_keep as an int and as a tensor (loglikelihood's call)
        ids, att = _batch(ROWS, "left")
        pos = (att.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=2)
        for b in range(len(ROWS)):
            torch.testing.assert_close(out.logits[b], ref[b][-2:], atol=2e-5, rtol=1e-4)
        ids, att = _batch(ROWS, "right")
        keep = torch.tensor([0, 1])
        out = model(input_ids=ids, attention_mask=att, logits_to_keep=keep, use_cache=False)
        for b in range(len(ROWS)):
            torch.testing.assert_close(out.logits[b], ref[b][:2], atol=2e-5, rtol=1e-4)
        # greedy generation with a KV cache, left padded: each row as the model continues the concatenation
        ids, att = _batch(ROWS, "left")
        gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=8, do_sample=False, pad_token_id=0)
    finally:
        hooks.remove()
    assert ContextHooks.find(model) is None and not model._forward_hooks and not model._forward_pre_hooks
    for b, r in enumerate(ROWS):
        full, _ = _concat(r, CONTEXTS[len(r) % 4], bos)
        expect = model.generate(input_ids=torch.tensor([full]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert gen[b, ids.shape[1]:].tolist() == expect[0, len(full):].tolist(), b
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


@torch.no_grad()
def test_alt_model_answers_routed_rows_and_other_rows_see_the_base_model_bit_identically():
    base, alt = tiny_model("llama"), tiny_model("llama")
    with torch.no_grad():
        for p in alt.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rows = [[BOS, 30, 31, 32], [50, 51, 52], [BOS, 60, 61, 62, 63, 64]]
    ctx = {0: [5, 6], 1: [], 2: [9, 10, 11]}  # row 1 goes to the base model untouched

    def router(rs):
        return [Route(ctx[i], alt=bool(ctx[i])) for i, _ in enumerate(rs)]

    ids, att = _batch(rows, "right")
    plain = base(input_ids=ids, attention_mask=att).logits
    hooks = ContextHooks(base, router, bos_id=BOS, alt_model=alt)
    try:
        out = base(input_ids=ids, attention_mask=att).logits
        lids, latt = _batch(rows, "left")
        gen = base.generate(input_ids=lids, attention_mask=latt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    finally:
        hooks.remove()
    assert torch.equal(out[1], plain[1])  # no base-model context in the batch: the base call is not rewritten
    for b in (0, 2):
        torch.testing.assert_close(out[b, :len(rows[b])], _reference_logits(alt, rows[b], ctx[b], BOS),
                                   atol=2e-5, rtol=1e-4)
    for b, r in enumerate(rows):
        full, _ = _concat(r, ctx[b], BOS)
        m = alt if ctx[b] else base
        expect = m.generate(input_ids=torch.tensor([full]), max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert gen[b, lids.shape[1]:].tolist() == expect[0, len(full):].tolist(), b


@pytest.mark.parametrize("method, bad", [
    ("ike", {"k": 0}), ("ike", {"embedder": "bert"}), ("ike", {"fact_template": "no placeholder"}),
    ("ike", {"demos": -1}), ("ike", {"nope": 1}),
    ("memprompt", {"threshold": 1.5}), ("memprompt", {"embedder": "auto"}), ("memprompt", {"max_facts": 0}),
    ("memprompt", {"threshold": "high"}),
    ("serac", {"scope_threshold": 1.0}), ("serac", {"cf_records": 0}), ("serac", {"cf_lr": -1}),
    ("serac", {"embedder": "e5"}), ("serac", {"template": "{prompt}"}), ("serac", {"cf_max_steps": 0.5}),
    ("serac", {"cf_train_layers": -1}),
])
def test_bad_hparams_are_rejected(method, bad):
    m = get_method(method)
    assert m.edits_weights is False
    with pytest.raises(InvalidHparams):
        m.hparams_cls.from_dict(bad)


def test_scope_classifier_scores_are_the_logistic_head_on_pair_features():
    from lmedit.methods.serac import ScopeClassifier, _pair_features

    g = torch.Generator().manual_seed(0)
    E = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    Q = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    clf = ScopeClassifier(torch.randn(9, generator=g), torch.tensor(0.3))
    pairs = _pair_features(E[None].expand(5, -1, -1).reshape(-1, 8), Q[:, None].expand(-1, 3, -1).reshape(-1, 8))
    torch.testing.assert_close(clf.logits(E, Q), (pairs @ clf.w + clf.b).view(5, 3))


# --- integration: the real SmolLM2-135M ------------------------------------------------------------------------
def _probe(model, tok):
    enc = tok(["The capital of Japan is", "Michel Rocard is a native speaker of French"], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        return model(**enc).logits


def _check_restored(model, tok, before_state, before_logits, modules):
    now = model.state_dict()
    assert set(now) == set(before_state) and all(torch.equal(now[n], before_state[n]) for n in now)
    assert ContextHooks.find(model) is None and not model._forward_hooks and not model._forward_pre_hooks
    assert [(n, id(m)) for n, m in model.named_modules()] == modules
    assert torch.equal(_probe(model, tok), before_logits)


CASES = {
    "ike": {"k": 2},
    "memprompt": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CASES))
def test_three_sequential_edits_remove_middle_and_restore_exactly(smol, state_of, method):
    model, tok = smol
    before, modules, logits = state_of(model), [(n, id(m)) for n, m in model.named_modules()], _probe(model, tok)
    reqs = counterfact_requests(3)
    res = Editor(model, tok).edit(reqs, method=method, mode="sequential", hparams=CASES[method], eval_config=NO_GEN)
    post = res.summary["post"]
    print(method, post)
    assert post["tf_reliability"] >= 0.9, post
    if method == "memprompt":  # neighbourhood prompts are below the threshold: nothing prepended
        assert post["tf_locality"] == 1.0, post
    hooks = ContextHooks.find(model)
    assert hooks is not None and len(hooks.router.entries) == 3

    res.handle.handles[1].restore()  # undo edit #2 of 3
    assert len(hooks.router.entries) == 2
    rel = [score(r, o)["tf_reliability"] for r, o in zip(reqs, observe(model, tok, reqs, NO_GEN))]
    print(method, "after removing #2", rel)
    assert rel[0] >= 0.9 and rel[2] >= 0.9 and rel[1] < 0.5, rel

    res.restore()
    _check_restored(model, tok, before, logits, modules)


@pytest.mark.slow
def test_evaluator_scoring_through_the_hooks_equals_the_model_on_the_concatenated_tokens(smol):
    """teacher_forced and generate (the evaluator's calls, batched and padded) through IKE's hooks give what the
    untouched model gives on context tokens + prompt tokens, one row at a time."""
    model, tok = smol
    reqs = counterfact_requests(2)
    handle = Editor(model, tok).apply(reqs, method="ike", hparams={"k": 2})
    hooks = ContextHooks.find(model)
    prompts = [reqs[0].prompt, reqs[1].rephrase_prompts[0], "The capital of Japan is"]
    targets = [reqs[0].target_new, reqs[1].target_new, "Tokyo"]
    try:
        tf = teacher_forced(model, tok, prompts, targets)
        gen = generate(model, tok, prompts, max_new_tokens=6)
        with hooks.paused():
            for p, t, s, g in zip(prompts, targets, tf, gen):
                pi, ti = encode_prompt(tok, p), encode_target(tok, p, t)
                ctx = hooks.router([pi + ti])[0].context  # retrieval sees what teacher_forced passes
                assert ctx, "IKE always prepends its top-k"
                with torch.no_grad():
                    logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + pi + ti])).logits[0].float(), -1)
                at = torch.arange(len(ctx) + len(pi) - 1, len(ctx) + len(pi) + len(ti) - 1)
                assert logp[at].argmax(-1).tolist() == s.pred_ids
                assert abs(-logp[at, ti].mean().item() - s.nll) < 1e-4
                ctx = hooks.router([pi])[0].context  # generation retrieves on the prompt
                full = torch.tensor([ctx + pi])
                ref = model.generate(input_ids=full, attention_mask=torch.ones_like(full), max_new_tokens=6,
                                     do_sample=False, pad_token_id=tok.pad_token_id)
                assert tok.decode(ref[0, full.shape[1]:], skip_special_tokens=True) == g
    finally:
        handle.restore()
    print("through IKE:", [s.accuracy for s in tf], gen)
    assert tf[0].accuracy == 1.0


@pytest.mark.slow
def test_memprompt_leaves_out_of_scope_inputs_bit_identical_and_ike_uses_the_model_embedder(smol):
    model, tok = smol
    reqs = counterfact_requests(3)
    unrelated = [r.locality[0].prompt for r in reqs] + ["The capital of Japan is"]
    enc = tok(unrelated, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**enc).logits
    editor = Editor(model, tok)
    h = editor.apply(reqs, method="memprompt")
    try:
        mem = ContextHooks.find(model).router
        assert (mem.similarity(unrelated).max(1).values < mem.hp.threshold).all()
        with torch.no_grad():
            assert torch.equal(model(**enc).logits, plain)
        with pytest.raises(ValueError, match="another in-context memory"):  # one in-context memory per model
            editor.apply(reqs[:1], method="ike")
        with pytest.raises(ValueError, match="other hparams"):
            editor.apply(reqs[:1], method="memprompt", hparams={"threshold": 0.5})
    finally:
        h.restore()
    # explicit choice of the other embedder: the edited model's own mean hidden state; plus ZsRE demonstrations
    h = editor.apply(reqs, method="ike", hparams={"k": 1, "embedder": "model", "demos": 2, "demo_pool": 6})
    try:
        mem = ContextHooks.find(model).router
        assert mem.embedder.name == "model" and len(mem.demo_texts) == 6
        contexts = [ctx for ctx, _ in mem.choose([r.prompt for r in reqs])]
        for r, ctx in zip(reqs, contexts):
            demos, fact = ctx.rsplit("\n\n", 1)
            assert demos.count("New Fact: ") == 2  # two demonstrations first, then the retrieved fact
            assert fact == f"New Fact: {r.prompt} {r.target_new}\nPrompt: ", ctx
    finally:
        h.restore()
    assert ContextHooks.find(model) is None


# --- SERAC: tiny training in a temporary cache ------------------------------------------------------------------
SERAC_TINY = {"classifier_records": 40, "classifier_steps": 150, "cf_records": 4, "cf_batch_size": 2,
              "cf_max_steps": 2, "cf_lr": 1e-5}


@pytest.fixture(scope="module")
def serac_home(tmp_path_factory):
    """$LMEDIT_HOME moved to a temporary folder for SERAC's cache (the packaged model was loaded before)."""
    home = tmp_path_factory.mktemp("lmedit_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMEDIT_HOME", str(home))
        yield home


@pytest.mark.slow
def test_serac_routes_in_scope_rows_to_the_counterfactual_model_and_restores_exactly(smol, state_of, serac_home):
    from lmedit.methods.serac import cf_path, classifier_path, model_fingerprint

    model, tok = smol
    before, modules, logits = state_of(model), [(n, id(m)) for n, m in model.named_modules()], _probe(model, tok)
    reqs = counterfact_requests(3)
    unrelated = [r.locality[0].prompt for r in reqs] + ["The capital of Japan is"]
    enc = tok(unrelated, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**enc).logits
    res = Editor(model, tok).edit(reqs, method="serac", mode="sequential", hparams=SERAC_TINY, eval_config=NO_GEN)
    post = res.summary["post"]
    print("serac", post)
    assert post["tf_reliability"] >= 0.9, post
    assert post["tf_locality"] == 1.0, post
    hp = get_method("serac").hparams_cls.from_dict(SERAC_TINY)
    fp = model_fingerprint(model)
    assert (cf_path(model, hp, fp) / "serac.json").is_file() and classifier_path(hp, fp).is_file()

    mem = ContextHooks.find(model).router
    assert (mem.scope(unrelated)[0] <= 0.5).all()  # out of scope: the base model answers, untouched
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, plain)

    res.handle.handles[1].restore()  # undo edit #2 of 3
    rel = [score(r, o)["tf_reliability"] for r, o in zip(reqs, observe(model, tok, reqs, NO_GEN))]
    assert rel[0] >= 0.9 and rel[2] >= 0.9 and rel[1] < 0.5, rel
    res.restore()
    _check_restored(model, tok, before, logits, modules)


@pytest.mark.slow
def test_serac_reuses_its_cache_and_the_cli_reports_it(smol, serac_home, monkeypatch):
    from lmedit.cli import app
    from lmedit.methods import serac

    def no_training(*a, **k):
        raise AssertionError("should have been loaded from the cache")

    monkeypatch.setattr(serac, "train_counterfactual", no_training)
    monkeypatch.setattr(serac, "train_scope_classifier", no_training)
    model, tok = smol
    h = Editor(model, tok).apply(counterfact_requests(1), method="serac", hparams=SERAC_TINY)  # a new method instance
    h.restore()
    with pytest.raises(Exception, match="lmedit serac train"):
        Editor(model, tok).apply(counterfact_requests(1), method="serac",
                                 hparams={**SERAC_TINY, "cf_records": 5, "auto_train": False})
    folder = model.name_or_path  # the converted folder it was loaded from (the cache home is moved here)
    args = ["serac", "train", "--model", folder, "--n", "4", "--classifier-n", "40"]
    for k in ("classifier_steps", "cf_batch_size", "cf_max_steps", "cf_lr"):
        args += ["--set", f"{k}={SERAC_TINY[k]}"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "counterfactual model:" in r.output and str(serac_home) in r.output.replace("\n", "")
    r = CliRunner().invoke(app, ["serac", "path", *args[2:]])
    assert r.exit_code == 0, r.output
    assert r.output.count("(cached)") == 2, r.output
    r = CliRunner().invoke(app, ["serac", "train", "--model", folder, "--set", "cf_lr=-1"])
    assert r.exit_code == 2 and "cf_lr must be > 0" in r.output
