"""`lmedit stats ...`: compute and cache corpus statistics ahead of editing."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

stats_app = typer.Typer(help="Corpus statistics (E[k kᵀ] of MLP keys) for ROME/MEMIT-style methods.",
                        no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _parse_layers(text: str) -> list[int]:
    """"4,5,6" or "4-8" or "-1" (negative counts from the end) -> list of ints."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)-(-?\d+)", part)
        if m:
            out.extend(range(int(m[1]), int(m[2]) + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError("no layers given")
    return out


@stats_app.command("compute")
def compute(
    model: str = typer.Option("smollm2-135m", help="packaged model name, local folder or hub id"),
    layers: str = typer.Option(..., help="comma-separated layer indices or ranges, e.g. 4,5,6 or 4-8"),
    corpus: Optional[str] = typer.Option(None, help="text file, folder of .txt files, or hf:NAME[:CONFIG] "
                                                    "(default: the staged WikiText-2)"),
    n_tokens: int = typer.Option(100_000, help="corpus tokens to average over"),
    batch_tokens: int = typer.Option(4096, help="tokens per forward pass (padded)"),
    accum_dtype: str = typer.Option("float64", help="accumulation dtype: float64 | float32"),
    dtype: str = typer.Option("float32", help="model dtype: float32 | bfloat16 | float16"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    no_cache: bool = typer.Option(False, help="compute even if cached, and do not write the cache"),
):
    """Compute E[k kᵀ] for the given layers in one pass over the corpus and cache it."""
    from ..models import ModelAdapter, load_model
    from .corpus import CorpusError
    from .second_moment import cache_path, layers_second_moment

    try:
        layer_list = _parse_layers(layers)
        t0 = time.perf_counter()
        with console.status(f"loading {model}"):
            m, tok = load_model(model, dtype=dtype, device=device)
        adapter = ModelAdapter(m)
        t1 = time.perf_counter()
        res = layers_second_moment(m, tok, adapter, layer_list, corpus=corpus, n_tokens=n_tokens,
                                   batch_tokens=batch_tokens, accum_dtype=accum_dtype, progress=True,
                                   cache=not no_cache)
        t2 = time.perf_counter()
    except (ValueError, FileNotFoundError, IndexError, CorpusError) as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)
    for layer, C in res.items():
        where = "(not cached)" if no_cache else str(cache_path(m, tok, adapter, layer, corpus=corpus,
                                                                 n_tokens=n_tokens, accum_dtype=accum_dtype))
        console.print(f"layer {layer}: {tuple(C.shape)} trace={float(C.trace()):.4g}  {where}")
    console.print(f"load {t1 - t0:.1f}s, statistics {t2 - t1:.1f}s for {len(res)} layer(s), {n_tokens} tokens")
