import pytest
import torch

from lmedit import ModelAdapter
from lmedit.models import ARCHITECTURES, Trace, UnsupportedArchitecture
from tests.tiny_models import FAMILIES, H, I, L, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_names_every_site(family):
    model = tiny_model(family)
    ad = ModelAdapter(model)
    assert ad.model_type == family and ad.n_layers == L and ad.hidden_size == H
    for layer in range(L):
        assert ad.as_out_in(ad.mlp_out_weight(layer)).shape == (H, I)  # (d_out, d_in) whatever the storage
        for p in ad.mlp_in_paths(layer):
            assert isinstance(ad.module(p), torch.nn.Module)
        ad.module(ad.attn_out_path(layer))
        ad.block(layer)
    assert ad.embed().weight.shape[1] == H
    ad.final_norm()
    assert ad.unembed().weight.shape[-1] == H
    assert ad.block_path(-1) == ad.block_path(L - 1)
    with pytest.raises(IndexError):
        ad.block_path(L)


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_out_input_is_the_key_and_writes_go_through(family):
    model = tiny_model(family)
    ad = ModelAdapter(model)
    ids = torch.randint(0, 100, (2, 5))
    path = ad.mlp_out_path(1)
    with Trace(model, [path], keep_input=True, keep_output=True) as tr:
        model(input_ids=ids)
    k, v = tr[path].input, tr[path].output
    assert k.shape == (2, 5, I) and v.shape == (2, 5, H)
    W = ad.as_out_in(ad.mlp_out_weight(1))
    bias = ad.mlp_out(1).bias
    expect = k @ W.T + (bias if bias is not None else 0)
    torch.testing.assert_close(v, expect, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        W.add_(1.0)  # in place through the (possibly transposed) view
    assert torch.all(ad.mlp_out_weight(1) != 0)


def test_hooks_are_removed_even_on_error():
    model = tiny_model("llama")
    ad = ModelAdapter(model)
    mod = ad.mlp_out(0)
    with pytest.raises(RuntimeError):
        with Trace(model, [ad.mlp_out_path(0)], keep_input=True):
            raise RuntimeError("boom")
    assert not mod._forward_hooks


def test_unknown_architecture_is_rejected():
    class Cfg:
        model_type = "mamba"

    class M(torch.nn.Module):
        config = Cfg()

    with pytest.raises(UnsupportedArchitecture, match="mamba"):
        ModelAdapter(M())


def test_every_family_has_a_tiny_model_test():
    assert set(FAMILIES) <= set(ARCHITECTURES)


@pytest.mark.slow
@pytest.mark.parametrize("name, family", [("smollm2-135m", "llama"), ("gemma3-270m", "gemma3_text"),
                                          ("qwen2.5-0.5b", "qwen2")])
def test_adapter_on_real_models(name, family):
    from lmedit import load_model

    model, tok = load_model(name)
    ad = ModelAdapter(model)
    assert ad.model_type == family
    d_ff = model.config.intermediate_size
    assert ad.as_out_in(ad.mlp_out_weight(ad.n_layers // 2)).shape == (ad.hidden_size, d_ff)
    enc = tok(["The Eiffel Tower is located in the city of"], return_tensors="pt")
    path = ad.mlp_out_path(ad.n_layers // 2)
    with Trace(model, [path], keep_input=True):
        logits = model(**enc).logits
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    assert logits[0, -1].argmax().item() == paris  # each packaged model knows this fact


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_below_gives_the_same_logits_and_gradients(family):
    """Blocks below the layer replay their output: same logits and same gradient for a change at
    the layer, and the original blocks (with their hooks) are back afterwards."""
    model = tiny_model(family)
    ad = ModelAdapter(model)
    ids = torch.tensor([[5, 17, 3, 99, 42, 7], [8, 9, 10, 11, 1, 1]])
    att = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    v = torch.zeros(H, requires_grad=True)
    h = ad.block(L - 1).register_forward_hook(
        lambda m, i, o: (o[0] + v,) + tuple(o[1:]) if isinstance(o, tuple) else o + v)
    try:
        full = model(input_ids=ids, attention_mask=att).logits
        g_full, = torch.autograd.grad(full[:, -1].logsumexp(-1).sum(), v)
        blocks_before = [ad.block(i) for i in range(L)]
        with ad.replay_below(L - 1, input_ids=ids, attention_mask=att):
            assert ad.block(0) is not blocks_before[0]
            part = model(input_ids=ids, attention_mask=att).logits
            g_part, = torch.autograd.grad(part[:, -1].logsumexp(-1).sum(), v)
        assert [ad.block(i) for i in range(L)] == blocks_before
    finally:
        h.remove()
    torch.testing.assert_close(part, full)
    torch.testing.assert_close(g_part, g_full)
