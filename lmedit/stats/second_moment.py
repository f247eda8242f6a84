"""Second-moment statistics C = E[k kᵀ] of MLP keys, for locate-then-edit methods (ROME, MEMIT, AlphaEdit).

k is the input of the MLP output projection of a layer (`adapter.mlp_out(layer)`: down_proj, c_proj,
fc_out, ...), one vector per real (non-padding) corpus token. Several layers are collected in one
pass over the corpus; the forward pass stops right after the deepest requested layer.

Cache
-----
Results are cached under `lmedit.paths.stats_dir()` ($LMEDIT_STATS_DIR, else $LMEDIT_HOME/stats) as
``<model>-<fingerprint>/layerLL-nN-<accum>-<key>.safetensors`` (the float32 matrix and its metadata)
plus a ``.json`` sidecar for people. The key covers:
  * the model: its config (minus volatile fields such as the transformers version), its name_or_path,
    its parameter dtype, and a hash of a sample of the token-embedding rows. It deliberately does NOT
    cover the MLP weights: the statistics are meant to be those of the *unedited* model, and an editor
    that asks again after editing gets the original statistics back. Corollary: compute (or warm the
    cache) before editing; statistics first computed on an already edited model are stored under the
    original model's key;
  * the tokenizer (class, size, and the ids of a fixed probe text);
  * the layer and module path, n_tokens, the accumulation dtype, the chunk length;
  * the corpus identity (paths, sizes, a content hash; see `Corpus.identity`).
Writes are atomic (temporary file in the same folder, then os.replace), so an interrupted run leaves
no partial entry. An entry that fails to load, has the wrong shape or key, or is not finite is
recomputed with a warning.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..paths import stats_dir
from ..tokens import context_length, right_pad
from .corpus import Corpus, iter_token_chunks, resolve_corpus

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_MAX_LEN = 512  # chunk length in tokens (or the model's context, if shorter)
_ACCUM = {"float64": torch.float64, "float32": torch.float32}
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France.\n1234"


# --- fingerprints and cache paths --------------------------------------------------------------
def _sha(obj) -> str:
    data = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()


def _param_dtype(model) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def model_identity(model, adapter) -> dict:
    """What identifies the *unedited* model (see the module docstring for what is left out and why)."""
    cfg = model.config.to_dict()
    for k in ("transformers_version", "_name_or_path", "dtype", "torch_dtype", "use_cache", "return_dict",
              "output_attentions", "output_hidden_states"):
        cfg.pop(k, None)
    w = adapter.embed().weight.detach()
    sample = torch.cat([w[:32], w[-32:]]).to(device="cpu", dtype=torch.float32).contiguous()
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", "") or ""
    return {"name_or_path": str(name), "config_sha256": _sha(cfg), "dtype": _param_dtype(model),
            "embed_sample_sha256": _sha(sample.numpy().tobytes()), "shape": list(w.shape)}


def tokenizer_identity(tok) -> dict:
    return {"class": type(tok).__name__, "size": len(tok), "probe_sha256": _sha(tok(_PROBE_TEXT)["input_ids"])}


def chunk_length(model) -> int:
    ctx = context_length(model)
    return min(DEFAULT_MAX_LEN, ctx) if ctx else DEFAULT_MAX_LEN


def _slug(name: str) -> str:
    base = Path(name.rstrip("/")).name if name else "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base)[:60] or "model"


class _CacheSpec:
    """Everything the cache key depends on for one (model, tokenizer, corpus, n_tokens, dtype)."""

    def __init__(self, model, tok, adapter, corpus: Corpus, n_tokens: int, accum_dtype: str):
        self.model_id = model_identity(model, adapter)
        self.tok_id = tokenizer_identity(tok)
        self.corpus_id = corpus.identity()
        self.adapter, self.n_tokens, self.accum_dtype = adapter, n_tokens, accum_dtype
        self.max_len = chunk_length(model)
        self.folder = stats_dir() / f"{_slug(self.model_id['name_or_path'])}-{_sha(self.model_id)[:10]}"

    def key_fields(self, layer: int) -> dict:
        return {"version": CACHE_VERSION, "model": self.model_id, "tokenizer": self.tok_id, "corpus": self.corpus_id,
                "layer": layer, "module": self.adapter.mlp_out_path(layer), "n_tokens": self.n_tokens,
                "accum_dtype": self.accum_dtype, "max_len": self.max_len}

    def key(self, layer: int) -> str:
        return _sha(self.key_fields(layer))

    def path(self, layer: int) -> Path:
        return self.folder / f"layer{layer:02d}-n{self.n_tokens}-{self.accum_dtype}-{self.key(layer)[:16]}.safetensors"


def cache_path(model, tok, adapter, layer: int, *, corpus=None, n_tokens: int = 100_000,
               accum_dtype: str = "float64") -> Path:
    """Where `layer_second_moment` with these arguments keeps (or would keep) its result."""
    _check_args(n_tokens, accum_dtype)
    spec = _CacheSpec(model, tok, adapter, resolve_corpus(corpus), n_tokens, accum_dtype)
    return spec.path(adapter._check_layer(layer))


# --- atomic write / tolerant read --------------------------------------------------------------
def _atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` into a temporary file next to `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save_entry(path: Path, C: torch.Tensor, meta: dict) -> None:
    flat = {k: (v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in meta.items()}
    _atomic_write(path, lambda tmp: save_file({"second_moment": C.contiguous()}, tmp, metadata=flat))

    def write_json(tmp):
        with open(tmp, "w") as fh:
            json.dump(meta, fh, indent=2, default=str)
    try:
        _atomic_write(path.with_suffix(".json"), write_json)
    except OSError as e:  # the sidecar is informational only
        log.warning("could not write %s: %s", path.with_suffix(".json"), e)


def _load_entry(path: Path, key: str, d_in: int | None) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        C = load_file(str(path))["second_moment"]
        if meta.get("key") != key:
            raise ValueError("key mismatch")
        if C.ndim != 2 or C.shape[0] != C.shape[1] or (d_in is not None and C.shape[0] != d_in):
            raise ValueError(f"wrong shape {tuple(C.shape)}")
        if C.dtype != torch.float32 or not torch.isfinite(C).all():
            raise ValueError("not a finite float32 matrix")
        return C
    except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed
        log.warning("ignoring unreadable statistics cache %s (%s: %s); recomputing", path, type(e).__name__, e)
        return None


def _mlp_in_features(adapter, layer: int) -> int | None:
    m = adapter.mlp_out(layer)
    n = getattr(m, "in_features", None)
    if n is None and getattr(m, "weight", None) is not None:
        w = m.weight
        n = w.shape[0] if adapter.spec.conv1d else w.shape[1]
    return n


# --- collection --------------------------------------------------------------------------------
def _batches(chunks, batch_tokens: int, buffer: int = 64):
    """Group chunks into batches of at most `batch_tokens` padded tokens (at least one chunk each).

    Chunks are buffered and sorted by length so that short ones are padded together; the order
    does not change a sum of outer products.
    """
    def flush(buf):
        buf.sort(key=len, reverse=True)
        i = 0
        while i < len(buf):
            rows = max(1, batch_tokens // len(buf[i]))
            yield buf[i: i + rows]
            i += rows

    buf = []
    for c in chunks:
        buf.append(c)
        if len(buf) >= buffer:
            yield from flush(buf)
            buf = []
    if buf:
        yield from flush(buf)


def _collect(model, tok, adapter, layers: list[int], corpus: Corpus, n_tokens: int, batch_tokens: int,
             accum_dtype: str, progress: bool) -> tuple[dict[int, torch.Tensor], int]:
    """One pass over the corpus: (sum over tokens of k kᵀ per layer, number of tokens)."""
    from tqdm.auto import tqdm

    from ..models.hooks import Trace, forward_until

    device = next(model.parameters()).device
    acc_device = torch.device("cpu") if device.type == "mps" and accum_dtype == "float64" else device
    dt = _ACCUM[accum_dtype]
    names = {layer: adapter.mlp_out_path(layer) for layer in layers}
    sums: dict[int, torch.Tensor | None] = {layer: None for layer in layers}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    count = 0
    chunks = iter_token_chunks(tok, corpus, max_len=chunk_length(model), n_tokens=n_tokens)

    was_training = model.training
    model.eval()
    bar = tqdm(total=n_tokens, unit="tok", desc=f"E[kkᵀ] layers {','.join(map(str, layers))}",
               disable=not progress, dynamic_ncols=True)
    try:
        with torch.no_grad(), Trace(model, list(names.values()), keep_input=True) as tr:
            for batch in _batches(chunks, batch_tokens):
                ids, att = right_pad(batch, pad)
                ids, att = ids.to(device), att.to(device)
                # the blocks above the deepest requested layer are not run
                forward_until(model, list(names.values()), input_ids=ids, attention_mask=att, use_cache=False)
                mask = att.bool()
                n = int(mask.sum())
                for layer, name in names.items():
                    k = tr[name].input
                    if k is None:
                        raise RuntimeError(f"no input captured at {name}")
                    k = k[mask].to(device=acc_device, dtype=dt)  # (n, d_in), real tokens only
                    if sums[layer] is None:
                        sums[layer] = torch.zeros((k.shape[1], k.shape[1]), dtype=dt, device=acc_device)
                    sums[layer].addmm_(k.T, k)
                    tr[name].input = None
                count += n
                bar.update(n)
    finally:
        bar.close()
        model.train(was_training)
    if count == 0:
        raise ValueError(f"the corpus {corpus.source} produced no tokens")
    if count < n_tokens:
        log.warning("corpus %s ran out after %d of the %d tokens asked for", corpus.source, count, n_tokens)
    return sums, count


# --- public API --------------------------------------------------------------------------------
def _check_args(n_tokens: int, accum_dtype: str) -> None:
    if accum_dtype not in _ACCUM:
        raise ValueError(f"accum_dtype must be one of {sorted(_ACCUM)}, got {accum_dtype!r}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")


def layers_second_moment(model, tok, adapter, layers: list[int], *, corpus: str | Path | None = None,
                         n_tokens: int = 100_000, batch_tokens: int = 4096, accum_dtype: str = "float64",
                         progress: bool = True, cache: bool = True) -> dict[int, torch.Tensor]:
    """E[k kᵀ] for several layers in one pass over the corpus; {layer: (d_in, d_in) float32 CPU tensor}.

    Negative layer indices count from the end; the dict is keyed by the (non-negative) layer index.
    Only layers missing from the cache are computed (all of them in one pass).
    """
    _check_args(n_tokens, accum_dtype)
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    layers = sorted({adapter._check_layer(layer) for layer in layers})
    if not layers:
        return {}
    c = resolve_corpus(corpus)
    spec = _CacheSpec(model, tok, adapter, c, n_tokens, accum_dtype) if cache else None
    out: dict[int, torch.Tensor] = {}
    if spec is not None:
        for layer in layers:
            C = _load_entry(spec.path(layer), spec.key(layer), _mlp_in_features(adapter, layer))
            if C is not None:
                log.info("layer %d: statistics from cache %s", layer, spec.path(layer))
                out[layer] = C
    todo = [layer for layer in layers if layer not in out]
    if todo:
        t0 = time.perf_counter()
        sums, count = _collect(model, tok, adapter, todo, c, n_tokens, batch_tokens, accum_dtype, progress)
        seconds = time.perf_counter() - t0
        for layer in todo:
            C = sums[layer] / count
            C = ((C + C.T) / 2).to(device="cpu", dtype=torch.float32)
            out[layer] = C
            if spec is not None:
                meta = {"key": spec.key(layer), "tokens": count, "layer": layer,
                        "module": adapter.mlp_out_path(layer), "n_tokens": n_tokens, "accum_dtype": accum_dtype,
                        "max_len": spec.max_len, "model": spec.model_id, "tokenizer": spec.tok_id,
                        "corpus": spec.corpus_id, "seconds": round(seconds, 3), "layers_in_pass": todo,
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
                try:
                    _save_entry(spec.path(layer), C, meta)
                except OSError as e:
                    log.warning("could not cache statistics at %s: %s", spec.path(layer), e)
    return {layer: out[layer] for layer in layers}


def layer_second_moment(model, tok, adapter, layer: int, *, corpus: str | Path | None = None,
                        n_tokens: int = 100_000, batch_tokens: int = 4096, accum_dtype: str = "float64",
                        progress: bool = True, cache: bool = True) -> torch.Tensor:
    """E[k kᵀ] over n_tokens corpus tokens, k = input of adapter.mlp_out(layer). Returns (d_in, d_in) float32 CPU tensor."""
    res = layers_second_moment(model, tok, adapter, [layer], corpus=corpus, n_tokens=n_tokens,
                               batch_tokens=batch_tokens, accum_dtype=accum_dtype, progress=progress, cache=cache)
    return next(iter(res.values()))
