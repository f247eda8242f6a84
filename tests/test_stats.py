"""Second-moment statistics (lmedit.stats): exactness, caching, atomic writes, corpus reading, CLI."""
from __future__ import annotations

import json
import logging
import os
import random

import pytest
import torch

from lmedit.models import ModelAdapter, Trace
from lmedit.stats import (CorpusError, iter_token_chunks, layer_second_moment, layers_second_moment,
                          read_corpus, resolve_corpus, wikitext_detokenize)
from lmedit.stats import second_moment as sm
from lmedit.stats.second_moment import cache_path, chunk_length

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [f"w{i}" for i in range(150)] + [",", ".", "the", "of", "and"]
CTX = 48  # tiny model context: chunks are at most this long


def _write_corpus(path, seed=0, n_articles=6):
    rng = random.Random(seed)
    lines = [" \n"]
    for a in range(n_articles):
        lines += [f" = Article {a} = \n", " \n"]
        for p in range(rng.randint(2, 5)):
            if p == 2:
                lines += [f" = = Section {p} = = \n", " \n"]
            n = rng.choice([3, 10, 40, 90])  # short paragraphs and ones longer than a chunk
            lines += [" " + " ".join(rng.choice(WORDS) for _ in range(n)) + " \n", " \n"]
    path.write_text("".join(lines))
    return path


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "[BOS]": 2}
    for w in WORDS + ["=", "Article", "Section"] + [str(i) for i in range(10)]:
        vocab.setdefault(w, len(vocab))
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]")


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    return model, tok, ModelAdapter(model)


@pytest.fixture
def corpus(tmp_path):
    return _write_corpus(tmp_path / "corpus.txt")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMEDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LMEDIT_STATS_DIR", raising=False)
    return tmp_path / "home"


def _reference(model, tok, adapter, layer, corpus, n_tokens):
    """Direct float64 E[k kᵀ]: one chunk at a time (no padding), all keys stacked, K.T @ K / N."""
    name = adapter.mlp_out_path(layer)
    keys = []
    for chunk in iter_token_chunks(tok, corpus, max_len=chunk_length(model), n_tokens=n_tokens):
        with torch.no_grad(), Trace(model, [name], keep_input=True) as tr:
            model(input_ids=torch.tensor([chunk]))
        keys.append(tr[name].input[0])
    K = torch.cat(keys).double()
    return K.T @ K / K.shape[0], K.shape[0]


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# --- corpus ------------------------------------------------------------------------------------
def test_chunks_respect_length_documents_and_count(tiny, corpus):
    _, tok, _ = tiny
    chunks = list(iter_token_chunks(tok, corpus, max_len=CTX))
    assert all(0 < len(c) <= CTX for c in chunks)
    assert any(len(c) < CTX for c in chunks)  # document ends give short chunks
    text = " ".join(tok.decode(c) for c in chunks)
    assert "Article" not in text and "Section" not in text and "=" not in text  # headings dropped
    total = sum(map(len, chunks))
    cut = list(iter_token_chunks(tok, corpus, max_len=CTX, n_tokens=total // 2 + 1))
    assert sum(map(len, cut)) == total // 2 + 1
    assert len(list(read_corpus(corpus))) == 6  # one document per top-level heading


def test_corpus_folder_errors_and_detokenize(tmp_path):
    (tmp_path / "d").mkdir()
    _write_corpus(tmp_path / "d" / "b.txt", seed=1)
    _write_corpus(tmp_path / "d" / "a.txt", seed=2)
    (tmp_path / "d" / "skip.md").write_text("not read")
    c = resolve_corpus(tmp_path / "d")
    assert [f.name for f in c.files] == ["a.txt", "b.txt"]
    with pytest.raises(CorpusError):
        resolve_corpus(tmp_path / "missing.txt")
    (tmp_path / "e").mkdir()
    with pytest.raises(CorpusError):
        resolve_corpus(tmp_path / "e")
    assert wikitext_detokenize(" a @-@ b , c 's d ( e ) 3 @.@ 5 . ") == "a-b, c's d (e) 3.5."
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(CorpusError, match="datasets"):
            list(resolve_corpus("hf:some/dataset").documents())


def test_default_corpus_is_staged_wikitext(tiny):
    c = resolve_corpus(None)
    names = sorted(f.name for f in c.files)
    if not names:
        pytest.skip("WikiText-2 not staged")
    assert names == ["wikitext-2_test.txt", "wikitext-2_valid.txt"]
    _, tok, _ = tiny
    assert sum(map(len, iter_token_chunks(tok, None, max_len=CTX, n_tokens=500))) == 500


# --- exactness ---------------------------------------------------------------------------------
def test_matches_direct_float64_reference(tiny, corpus, home):
    model, tok, adapter = tiny
    n = 700
    refs = {layer: _reference(model, tok, adapter, layer, corpus, n) for layer in (0, 1)}
    assert refs[0][1] == n
    # batch_tokens=100 with 48-token chunks: 2 rows per batch, right padding in most batches
    both = layers_second_moment(model, tok, adapter, [1, 0], corpus=corpus, n_tokens=n, batch_tokens=100,
                                progress=False, cache=False)
    assert list(both) == [0, 1]
    for layer in (0, 1):
        C = both[layer]
        assert C.shape == (48, 48) and C.dtype == torch.float32 and C.device.type == "cpu"
        assert _rel(C, refs[layer][0]) < 1e-6
    single = layer_second_moment(model, tok, adapter, -1, corpus=corpus, n_tokens=n, batch_tokens=4096,
                                 progress=False, cache=False)
    assert _rel(single, refs[1][0]) < 1e-6


def test_float32_accumulation_close_to_float64(tiny, corpus, home):
    model, tok, adapter = tiny
    c64 = layer_second_moment(model, tok, adapter, 1, corpus=corpus, n_tokens=600, progress=False, cache=False)
    c32 = layer_second_moment(model, tok, adapter, 1, corpus=corpus, n_tokens=600, accum_dtype="float32",
                              progress=False, cache=False)
    assert _rel(c32, c64) < 1e-5
    with pytest.raises(ValueError):
        layer_second_moment(model, tok, adapter, 1, corpus=corpus, accum_dtype="float16", progress=False)


def test_bfloat16_model(tiny, corpus, home):
    model, tok, adapter = tiny
    import copy

    m16 = copy.deepcopy(model).to(torch.bfloat16)
    C16 = layer_second_moment(m16, tok, ModelAdapter(m16), 1, corpus=corpus, n_tokens=300, progress=False,
                              cache=False)
    C = layer_second_moment(model, tok, adapter, 1, corpus=corpus, n_tokens=300, progress=False, cache=False)
    assert C16.dtype == torch.float32 and torch.isfinite(C16).all()
    assert _rel(C16, C) < 0.1


# --- cache -------------------------------------------------------------------------------------
def _boom(*a, **k):
    raise AssertionError("collector called although the result should come from the cache")


def test_second_call_reads_cache(tiny, corpus, home, monkeypatch):
    model, tok, adapter = tiny
    C1 = layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=400, progress=False)
    path = cache_path(model, tok, adapter, 0, corpus=corpus, n_tokens=400)
    assert path.is_file() and path.is_relative_to(home / "stats")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["tokens"] == 400 and meta["layer"] == 0 and meta["module"] == "model.layers.0.mlp.down_proj"

    monkeypatch.setattr(sm, "_collect", _boom)
    C2 = layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=400, progress=False)
    assert torch.equal(C1, C2)
    with pytest.raises(AssertionError, match="collector called"):  # another n_tokens is another entry
        layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=401, progress=False)
    with pytest.raises(AssertionError, match="collector called"):  # so is another accumulation dtype
        layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=400, accum_dtype="float32",
                            progress=False)
    corpus.write_text(corpus.read_text() + " w1 w2 w3\n")  # a changed corpus is another entry
    with pytest.raises(AssertionError, match="collector called"):
        layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=400, progress=False)


def test_only_missing_layers_are_collected(tiny, corpus, home, monkeypatch):
    model, tok, adapter = tiny
    C0 = layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=300, progress=False)
    seen, real = [], sm._collect

    def spy(model_, tok_, adapter_, layers, *a, **k):
        seen.append(list(layers))
        return real(model_, tok_, adapter_, layers, *a, **k)

    monkeypatch.setattr(sm, "_collect", spy)
    both = layers_second_moment(model, tok, adapter, [0, 1], corpus=corpus, n_tokens=300, progress=False)
    assert seen == [[1]] and torch.equal(both[0], C0)


def test_stats_dir_env_var(tiny, corpus, tmp_path, monkeypatch):
    model, tok, adapter = tiny
    monkeypatch.setenv("LMEDIT_STATS_DIR", str(tmp_path / "elsewhere"))
    layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=100, progress=False)
    assert list((tmp_path / "elsewhere").rglob("*.safetensors"))


def test_interrupted_write_leaves_no_entry(tiny, corpus, home, monkeypatch):
    model, tok, adapter = tiny
    real_save = sm.save_file

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 100)  # some bytes are on disk when the interruption comes
        raise KeyboardInterrupt

    monkeypatch.setattr(sm, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=300, progress=False)
    assert [p for p in home.rglob("*") if p.is_file()] == []  # neither the entry nor a temporary file

    monkeypatch.setattr(sm, "save_file", real_save)
    calls = []
    real = sm._collect
    monkeypatch.setattr(sm, "_collect", lambda *a, **k: calls.append(1) or real(*a, **k))
    C = layer_second_moment(model, tok, adapter, 0, corpus=corpus, n_tokens=300, progress=False)
    assert calls == [1] and torch.isfinite(C).all()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_corrupt_cache_is_recomputed(tiny, corpus, home, monkeypatch, caplog, damage):
    model, tok, adapter = tiny
    C = layer_second_moment(model, tok, adapter, 1, corpus=corpus, n_tokens=300, progress=False)
    path = cache_path(model, tok, adapter, 1, corpus=corpus, n_tokens=300)
    if damage == "garbage":
        path.write_bytes(b"this is not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-1000])
    else:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        save_file({"second_moment": torch.zeros(5, 5)}, str(path), metadata=meta)  # right key, wrong shape
    with caplog.at_level(logging.WARNING, logger="lmedit.stats.second_moment"):
        again = layer_second_moment(model, tok, adapter, 1, corpus=corpus, n_tokens=300, progress=False)
    assert "recomputing" in caplog.text
    assert torch.allclose(again, C, rtol=1e-6, atol=0)
    monkeypatch.setattr(sm, "_collect", _boom)  # and the entry was rewritten
    assert torch.equal(layer_second_moment(model, tok, adapter, 1, corpus=corpus, n_tokens=300, progress=False),
                       again)


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_compute(tiny, corpus, home, tmp_path):
    from typer.testing import CliRunner

    from lmedit.cli import app

    model, tok, _ = tiny
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    res = CliRunner().invoke(app, ["stats", "compute", "--model", str(folder), "--layers", "0,1",
                                   "--corpus", str(corpus), "--n-tokens", "200"])
    assert res.exit_code == 0, res.output
    assert "layer 0" in res.output and "layer 1" in res.output and str(home / "stats") in res.output.replace("\n", "")
    assert len(list((home / "stats").rglob("*.safetensors"))) == 2
    bad = CliRunner().invoke(app, ["stats", "compute", "--model", str(folder), "--layers", "7",
                                   "--corpus", str(corpus)])
    assert bad.exit_code == 2


# --- the real model ----------------------------------------------------------------------------
@pytest.mark.slow
def test_real_model_second_moment(tmp_path, monkeypatch):
    from lmedit import load_model

    monkeypatch.setenv("LMEDIT_STATS_DIR", str(tmp_path / "stats"))  # models still come from the usual cache
    model, tok = load_model("smollm2-135m")
    adapter = ModelAdapter(model)
    C = layer_second_moment(model, tok, adapter, 6, n_tokens=2000, progress=False)
    assert C.shape == (1536, 1536) and C.dtype == torch.float32
    assert torch.isfinite(C).all()
    assert torch.equal(C, C.T)
    ev = torch.linalg.eigvalsh(C.double())
    assert ev[0] > -1e-4 * ev[-1]
    assert list((tmp_path / "stats").rglob("*.safetensors"))
