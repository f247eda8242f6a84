"""Locate-then-edit methods: shared plumbing on a tiny GPT-2 (Conv1D layout), and the real SmolLM2 (slow)."""
import pytest
import torch

from lmedit import EditRequest, Editor, ModelAdapter
from lmedit.methods import locate
from lmedit.methods.alphaedit import alphaedit_state

TINY_LAYER = 1


@pytest.fixture(scope="module")
def smol_tok():
    from transformers import AutoTokenizer

    from lmedit.models.loading import resolve
    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _tiny_gpt2(tok, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, GPT2Config
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_inner=64, n_layer=3, n_head=4, n_positions=128)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


def _fallback_moments(model, tok, adapter, layers, *, n_tokens, corpus=None, progress=False):
    """Test-only stand-in for lmedit.stats on tiny random models: E[kkᵀ] over random token ids."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (8, 32), generator=g)
    paths = [adapter.mlp_out_path(l) for l in layers]
    from lmedit.models.hooks import Trace
    with torch.no_grad(), Trace(model, paths, keep_input=True) as tr:
        model(input_ids=ids)
    out = {}
    for l, p in zip(layers, paths):
        k = tr[p].input.reshape(-1, tr[p].input.shape[-1]).double()
        out[l] = (k.T @ k / len(k) + 1e-4 * torch.eye(k.shape[1], dtype=torch.float64)).float()
    return out


@pytest.fixture
def tiny(smol_tok, monkeypatch):
    monkeypatch.setattr(locate, "second_moments", _fallback_moments)
    monkeypatch.setattr(locate, "_MOM_CACHE", __import__("weakref").WeakKeyDictionary())
    return _tiny_gpt2(smol_tok), smol_tok


REQS = [
    EditRequest(prompt="The capital of France is", subject="France", target_new="Rome", target_true="Paris"),
    EditRequest(prompt="In the city of Berlin, people speak", subject="Berlin", target_new="Japanese"),
    EditRequest(prompt="Marie Curie was born in", subject="Marie Curie", target_new="Canada"),
]
FAST = dict(v_steps=6, v_lr=0.2, mom2_n_tokens=256)


def test_subject_token_located_anywhere(smol_tok):
    text = "Here is a fact. In the city of Berlin, people speak"
    ids, i = locate.subject_last_token(smol_tok, text, "Berlin", start=len("Here is a fact. "))
    assert smol_tok.decode(ids[i]).strip() == "Berlin"
    ids, i = locate.subject_last_token(smol_tok, "Marie Curie was born in", "Marie Curie")
    assert smol_tok.decode(ids[i]).strip().endswith("ie")
    with pytest.raises(ValueError):
        locate.subject_last_token(smol_tok, "nothing here", "Berlin")


def test_batched_and_serial_targets_agree(smol_tok):
    model = _tiny_gpt2(smol_tok, torch.float64)
    ad = ModelAdapter(model)
    site = [locate.Site(ad.mlp_out_path(TINY_LAYER), norm_ref="residual", block=ad.block_path(TINY_LAYER))]
    kw = dict(steps=8, lr=0.1, stop_loss=0.0, clamp_norm_factor=4.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batched = locate.optimise_targets(model, smol_tok, REQS, site, **kw)
    serial = [locate.optimise_targets(model, smol_tok, [r], site, **kw) for r in REQS]
    d_b = batched.deltas[site[0].path]
    d_s = torch.cat([s.deltas[site[0].path] for s in serial])
    assert d_b.abs().max() > 1e-3  # something was learnt
    assert torch.allclose(d_b, d_s, atol=1e-6, rtol=1e-5)
    assert torch.allclose(batched.losses, torch.cat([s.losses for s in serial]), atol=1e-8)
    # in chunks (bounded memory): the same targets, every field in request order
    chunked = locate.optimise_targets(model, smol_tok, REQS, site, chunk=2, **kw)
    assert len(REQS) > 2 and torch.allclose(chunked.deltas[site[0].path], d_b, atol=1e-9)
    for f in ("losses", "nll", "steps"):
        assert torch.allclose(getattr(chunked, f).double(), getattr(batched, f).double(), atol=1e-9)
    assert torch.allclose(chunked.init[site[0].path], batched.init[site[0].path], atol=1e-9)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
    # the blocks below the site's layer replayed instead of recomputed: the same targets
    replayed = locate.optimise_targets(model, smol_tok, REQS, site, adapter=ad, layer=TINY_LAYER, **kw)
    assert torch.allclose(replayed.deltas[site[0].path], d_b, atol=1e-9)
    assert dict(model.named_parameters()).keys() == before.keys()
    # every column recomputed at every step (no KV cache of the columns before the subject): the same
    full = locate.optimise_targets(model, smol_tok, REQS, site, reuse_prefix=False, **kw)
    assert torch.allclose(full.deltas[site[0].path], d_b, atol=1e-9)


def test_rows_aligned_on_the_subject_keep_their_tokens_and_targets(smol_tok):
    rows = locate._target_rows(smol_tok, REQS, ["Note: "])
    al = locate.align_on_subject(rows, pad_id=0)
    assert (al.subj_pos == al.subj_pos[0]).all()
    for b in range(len(rows.owner)):
        own = rows.input_ids[b][rows.attention_mask[b].bool()]
        assert torch.equal(al.input_ids[b][al.attention_mask[b].bool()], own)
        assert torch.equal(al.input_ids[b, al.subj_pos[b]], rows.input_ids[b, rows.subj_pos[b]])
        assert torch.equal(al.extra["tgt"][b][al.extra["tmask"][b]], rows.extra["tgt"][b][rows.extra["tmask"][b]])
        assert al.extra["position_ids"][b, al.lengths[b] - 1] == rows.lengths[b] - 1  # positions count own tokens


def test_fixed_prefix_gives_the_same_targets_on_the_real_model(smol):
    model, tok = smol
    ad = ModelAdapter(model)
    site = [locate.Site(ad.mlp_out_path(4), norm_ref="residual", block=ad.block_path(4))]
    kw = dict(steps=3, lr=0.5, stop_loss=0.0, adapter=ad, layer=4, prefixes=["Note: "])
    fast = locate.optimise_targets(model, tok, REQS[:2], site, **kw)
    full = locate.optimise_targets(model, tok, REQS[:2], site, reuse_prefix=False, **kw)
    assert fast.deltas[site[0].path].abs().max() > 1e-3
    assert torch.allclose(fast.deltas[site[0].path], full.deltas[site[0].path], atol=1e-4, rtol=1e-3)
    assert torch.allclose(fast.nll, full.nll, atol=1e-4)


def test_early_stop_freezes_a_request(smol_tok):
    model = _tiny_gpt2(smol_tok, torch.float64)
    ad = ModelAdapter(model)
    site = [locate.Site(ad.mlp_out_path(TINY_LAYER))]
    res = locate.optimise_targets(model, smol_tok, REQS[:2], site, steps=5, stop_loss=1e9)
    assert res.steps.tolist() == [0, 0]
    assert res.deltas[site[0].path].abs().max() == 0


def test_rome_inserts_value_exactly_on_conv1d(tiny):
    model, tok = tiny
    ad = ModelAdapter(model)
    assert ad.spec.conv1d
    hp = dict(FAST, layers=[TINY_LAYER], v_stop_loss=0.0)
    site = locate.Site(ad.mlp_out_path(TINY_LAYER))
    from lmedit.methods.rome import ROMEHparams
    h = ROMEHparams.from_dict(hp)
    expect = locate.optimise_targets(model, tok, REQS[:1], [site], **h.target_kwargs())
    v_star = expect.init[site.path] + expect.deltas[site.path]
    res = Editor(model, tok).edit(REQS[:1], method="rome", hparams=hp, evaluate=False)
    got = locate.outputs_at_subject(model, tok, REQS[:1], [site.path])[site.path]
    assert torch.allclose(got, v_star, atol=1e-4, rtol=1e-4)
    delta = res.handle.handles[0].deltas()[ad.param_name(site.path)]
    assert torch.linalg.matrix_rank(delta.double(), rtol=1e-6) == 1
    res.restore()


def test_r_rome_inserts_the_averaged_key(tiny):
    model, tok = tiny
    ad = ModelAdapter(model)
    hp = dict(FAST, layers=[TINY_LAYER], v_stop_loss=0.0)
    keys = locate.compute_keys(model, tok, ad, REQS[:1], [TINY_LAYER])
    w0 = ad.as_out_in(ad.mlp_out_weight(TINY_LAYER)).detach().clone()
    res = Editor(model, tok).edit(REQS[:1], method="r-rome", hparams=hp, evaluate=False)
    w1 = ad.as_out_in(ad.mlp_out_weight(TINY_LAYER)).detach()
    k = keys.mean[TINY_LAYER][0]
    # ΔW is rank one along C⁻¹k̄ and maps k̄ to a non-zero change
    assert ((w1 - w0) @ k).norm() > 1e-4
    res.restore()
    assert torch.equal(ad.as_out_in(ad.mlp_out_weight(TINY_LAYER)), w0)


def test_post_norm_preimage_reaches_a_reachable_change_and_approaches_an_unreachable_one():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    torch.manual_seed(0)
    norm = Gemma3RMSNorm(64).requires_grad_(False)
    norm.weight.normal_(0, 0.5)
    m = torch.randn(5, 64)
    reachable = norm(m + 0.3 * torch.randn(5, 64)) - norm(m)
    dm = locate.post_norm_preimage(norm, m, reachable)
    assert torch.allclose(norm(m + dm) - norm(m), reachable, atol=1e-5)
    # a normalised vector has a fixed scale, so most changes cannot be met exactly: closer than adding them as is
    wanted = 0.3 * torch.randn(5, 64)
    err = (norm(m + locate.post_norm_preimage(norm, m, wanted, iters=20)) - norm(m) - wanted).norm(dim=1)
    naive = (norm(m + wanted) - norm(m) - wanted).norm(dim=1)
    assert (err < naive).all() and err.mean() < 0.5 * naive.mean()


def _tiny_gemma(tok):
    """A tiny Gemma 3 (its MLP output is normalised before the residual), norms not all ones as in a trained one."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("through_the_norm", [True, False])
def test_memit_on_a_post_norm_family_puts_the_residual_at_its_target(smol_tok, monkeypatch, through_the_norm):
    monkeypatch.setattr(locate, "second_moments", _fallback_moments)
    monkeypatch.setattr(locate, "_MOM_CACHE", __import__("weakref").WeakKeyDictionary())
    if not through_the_norm:  # what MEMIT did before: the residual change written to the projection's output as is
        monkeypatch.setattr(locate, "post_norm_preimage", lambda norm, m, change: change)
    from lmedit.methods.memit import MEMIT
    model = _tiny_gemma(smol_tok)
    ad = ModelAdapter(model)
    assert ad.mlp_post_norm_path(1) == "model.layers.1.post_feedforward_layernorm"
    targets = {}
    target = MEMIT.target
    monkeypatch.setattr(MEMIT, "target", lambda self, *a: targets.setdefault("z", target(self, *a)))
    last = ad.block_path(1)
    before = locate.outputs_at_subject(model, smol_tok, REQS, [last])[last]
    # one context and a tiny λ: the least-squares solves are exact, so only the norm can leave a gap
    Editor(model, smol_tok).apply(REQS, method="memit", hparams=dict(
        layers=[0, 1], prefixes=[], v_steps=20, v_stop_loss=0.0, mom2_weight=1e-4, mom2_n_tokens=256))
    after = locate.outputs_at_subject(model, smol_tok, REQS, [last])[last]
    z = targets["z"]
    assert ((z - before).norm(dim=1) > 0.05 * z.norm(dim=1)).all()  # the target is a real move
    gap = (after - z).norm(dim=1) / z.norm(dim=1)
    if through_the_norm:
        assert (gap < 1e-3).all()
    else:
        assert (gap > 0.02).all()


@pytest.mark.parametrize("method", ["rome", "r-rome", "memit", "pmet", "emmet", "alphaedit"])
def test_every_method_edits_and_restores_exactly_on_tiny_gpt2(tiny, method, state_of, same_state):
    model, tok = tiny
    snap = state_of(model)
    layers = [TINY_LAYER] if "rome" in method else [0, 1]
    mode = "sequential" if "rome" in method else "batch"
    res = Editor(model, tok).edit(REQS[:2], method=method, hparams=dict(FAST, layers=layers), mode=mode,
                                  evaluate=False)
    assert not same_state(model, snap)
    res.restore()
    assert same_state(model, snap)


def test_alphaedit_sequential_keys_and_preserved_subspace(tiny):
    model, tok = tiny
    ad = ModelAdapter(model)
    ed = Editor(model, tok)
    hp = dict(FAST, layers=[0, 1], nullspace_threshold=0.5, nullspace_relative=True)
    state = alphaedit_state(model)
    assert state.keys == {}
    r1 = ed.edit(REQS[:1], method="alphaedit", hparams=hp, evaluate=False)
    r2 = ed.edit(REQS[1:3], method="alphaedit", hparams=hp, mode="batch", evaluate=False)
    assert len(state.keys) == 2
    assert state.previous_keys(1).shape == (64, 3)
    # a resumed sequential run gets the earlier edits' keys back (bench saves resume_state with the weights)
    from lmedit.methods import get_method

    saved = get_method("alphaedit").resume_state(model)
    kept = dict(state.keys)
    state.keys.clear()
    get_method("alphaedit").load_resume_state(model, tok, None, saved)
    assert torch.equal(state.previous_keys(1), torch.cat([k[1] for k in kept.values()], dim=1))
    state.keys.clear()
    state.keys.update(kept)
    # the update lies in the null space: ΔW P = ΔW, so preserved directions are untouched
    ((key, U),) = [(k, v) for k, v in state.bases.items() if k[0] == 1]
    P = U @ U.T
    delta = ad.as_out_in(r2.handle.handles[0].deltas()[ad.param_name(ad.mlp_out_path(1))]).double()
    assert (delta - delta @ P.double()).abs().max() < 1e-5 * max(1.0, float(delta.abs().max()))
    # the cached Gram matrix of earlier edits follows the keys: extended, then rebuilt after a removal
    def gram_of(keys):
        return (U.T @ keys.double()) @ (U.T @ keys.double()).T

    assert torch.allclose(state.previous_gram(key, torch.float64), gram_of(state.previous_keys(1)))
    r2.restore()
    assert len(state.keys) == 1 and state.previous_keys(1).shape == (64, 1)
    assert torch.allclose(state.previous_gram(key, torch.float64), gram_of(state.previous_keys(1)))
    r1.restore()
    assert state.keys == {}


def test_alphaedit_with_an_empty_null_space_refuses_and_leaves_the_model(tiny, state_of, same_state):
    model, tok = tiny
    snap = state_of(model)
    hp = dict(FAST, layers=[0, 1], nullspace_threshold=1e-30)
    with pytest.raises(ValueError, match="null space at layer 0 is empty"):
        Editor(model, tok).edit(REQS[:1], method="alphaedit", hparams=hp, evaluate=False)
    assert same_state(model, snap) and alphaedit_state(model).keys == {}


# --- the real model ------------------------------------------------------------------------------
def _efficacy(model, tok, reqs):
    from lmedit.evaluate.scoring import teacher_forced
    new = teacher_forced(model, tok, [r.prompt for r in reqs], [r.target_new for r in reqs])
    true = teacher_forced(model, tok, [r.prompt for r in reqs], [r.target_true for r in reqs])
    return [a.nll < b.nll for a, b in zip(new, true)]


SMALL_STATS = dict(mom2_n_tokens=2000, v_steps=12)


@pytest.mark.slow
@pytest.mark.parametrize("method,mode", [("rome", "sequential"), ("memit", "batch"), ("alphaedit", "batch")])
def test_real_model_edits_and_restores(smol, method, mode, state_of, same_state):
    from conftest import counterfact_requests
    model, tok = smol
    reqs = counterfact_requests(2)
    snap = state_of(model)
    res = Editor(model, tok).edit(reqs, method=method, hparams=SMALL_STATS, mode=mode, evaluate=False)
    ok = _efficacy(model, tok, reqs)
    res.restore()
    assert same_state(model, snap)
    assert sum(ok) >= 1, ok


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_bfloat16_model_is_edited_with_full_precision_solves(smol_tok, monkeypatch, method, state_of, same_state):
    monkeypatch.setattr(locate, "second_moments", _fallback_moments)
    monkeypatch.setattr(locate, "_MOM_CACHE", __import__("weakref").WeakKeyDictionary())
    model = _tiny_gpt2(smol_tok, torch.bfloat16)
    snap = state_of(model)
    layers = [TINY_LAYER] if method == "rome" else [0, 1]
    res = Editor(model, smol_tok).edit(REQS[:1], method=method, evaluate=False,
                                       hparams=dict(FAST, layers=layers, solve_dtype="float64"))
    ad = ModelAdapter(model)
    w = ad.mlp_out_weight(TINY_LAYER)
    assert w.dtype == torch.bfloat16 and torch.isfinite(w.float()).all()
    assert not same_state(model, snap)
    res.restore()
    assert same_state(model, snap)


def test_pmet_ablation_switches(tiny, state_of, same_state):
    from lmedit.hparams import InvalidHparams
    from lmedit.methods import get_method

    model, tok = tiny
    pmet, ad = get_method("pmet"), ModelAdapter(model)
    hp = pmet.hparams_cls.from_dict(dict(FAST, layers=[0, 1]))
    assert (hp.spread, hp.attn_delta) == ("sqrt", True)  # PMET as published
    assert [s.path for s in pmet.sites(ad, 1, hp)] == [ad.attn_out_path(1), ad.mlp_out_path(1)]
    hp = hp.replace(spread="linear", attn_delta=False)
    assert [s.path for s in pmet.sites(ad, 1, hp)] == [ad.mlp_out_path(1)] and pmet.spread_rule(hp) == "linear"
    with pytest.raises(InvalidHparams, match="spread must be one of"):
        hp.replace(spread="cubic")
    snap = state_of(model)
    res = Editor(model, tok).edit(REQS[:2], method="pmet", hparams=hp.to_dict(), mode="batch", evaluate=False)
    assert not same_state(model, snap)
    res.restore()
    assert same_state(model, snap)
