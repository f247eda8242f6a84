"""Speed and memory of edits: seconds per edit and peak memory, per method and batch size.

Real packaged models run on the CPU; on a GPU, randomly initialised models of real shapes
(GPT-2 XL, Llama-3-8B) stand in, because no weights travel to the GPU machine and speed
depends on shapes, not on values. Statistics are computed (and cached) before timing starts,
so the timings are "once statistics are cached"; their cost is reported separately.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

# real shapes for randomly initialised stand-ins
SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-xl": dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25, n_positions=1024, vocab_size=50257),
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                      rope_theta=500000.0),
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=49152, max_position_embeddings=512),
}
# layers used on the stand-ins (the papers' choices for these shapes)
SHAPE_LAYERS = {"gpt2-xl": {"rome": [17], "memit": [13, 14, 15, 16, 17], "alphaedit": [13, 14, 15, 16, 17]},
                "llama3-8b": {"rome": [5], "memit": [4, 5, 6, 7, 8], "alphaedit": [4, 5, 6, 7, 8]},
                "tiny-llama": {"rome": [1], "memit": [1, 2], "alphaedit": [1, 2]}}


def random_model(shape: str, dtype: torch.dtype, device: str):
    """A randomly initialised model of a real shape, with the SmolLM2 tokenizer (ids fit every vocab here)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..models import fetch

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(fetch("smollm2-135m")))
    tok.pad_token = tok.pad_token or tok.eos_token
    return model, tok


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or resident set size sampled every 5 ms."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak_mb = 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = False
            self.peak_mb = self._rss_mb()

            def sample():
                while not self._stop:
                    self.peak_mb = max(self.peak_mb, self._rss_mb())
                    time.sleep(0.005)
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop = True
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())


@dataclass
class SpeedRow:
    model: str
    device: str
    dtype: str
    method: str
    batch: int
    edits: int
    seconds: float
    seconds_per_edit: float
    peak_mb: float
    stats_seconds: float
    threads: int  # torch's CPU threads (OMP_NUM_THREADS / torch.set_num_threads)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def measure(model_name: str = "smollm2-135m", methods: Sequence[str] = ("rome", "memit", "alphaedit"),
            batch_sizes: Sequence[int] = (1, 10, 100), rome_edits: int = 5, device: str = "cpu",
            dtype: str = "float32", stats_tokens: int | None = None, hparams: dict[str, Any] | None = None,
            progress: bool = True) -> list[SpeedRow]:
    """Time ROME single edits and batched edits of the other methods; every edit is undone after timing."""
    from ..data import load_dataset
    from ..editor import Editor
    from ..models import load_model
    from ..models.loading import _DTYPES
    from ..stats import layers_second_moment

    if model_name in SHAPES:
        model, tok = random_model(model_name, _DTYPES[dtype], device)
    else:
        model, tok = load_model(model_name, dtype=dtype, device=device)
    editor = Editor(model, tok)
    need = max(list(batch_sizes) + [rome_edits])
    reqs = list(load_dataset("counterfact-edit", limit=need))
    rows: list[SpeedRow] = []
    for method in methods:
        overrides = dict(hparams or {})
        if model_name in SHAPES:
            overrides.setdefault("layers", SHAPE_LAYERS[model_name][method if method in ("rome", "memit", "alphaedit") else "memit"])
        if stats_tokens is not None:
            overrides["mom2_n_tokens"] = stats_tokens
        m, hp, _ = editor.prepare(reqs[:1], method, overrides)
        t = time.perf_counter()
        layers_second_moment(model, tok, editor.adapter, list(hp.layers), n_tokens=hp.mom2_n_tokens,
                             corpus=getattr(hp, "mom2_corpus", None), progress=progress)
        if hasattr(m, "warm_up"):
            m.warm_up(model, tok, editor.adapter, hp)
        stats_s = time.perf_counter() - t
        plans = [(1, rome_edits)] if not m.supports_batch else [(b, b) for b in batch_sizes]
        for batch, edits in plans:
            with PeakMemory(device) as mem:
                t = time.perf_counter()
                handles = []
                for i in range(0, edits, batch):
                    handles.append(m.apply(model, tok, editor.adapter, reqs[i:i + batch], hp))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t
            for h in reversed(handles):
                h.restore()
            if hasattr(m, "reset"):
                m.reset()
            rows.append(SpeedRow(model_name, device, dtype, method, batch, edits, round(seconds, 3),
                                 round(seconds / edits, 4), round(mem.peak_mb, 1), round(stats_s, 2),
                                 torch.get_num_threads()))
            if progress:
                print(rows[-1].to_dict(), flush=True)
    return rows


def markdown(rows: Sequence[SpeedRow]) -> str:
    out = ["| model | device | dtype | CPU threads | method | batch | edits | total s | s / edit | peak MB | stats s (once) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r.model} | {r.device} | {r.dtype} | {r.threads} | {r.method} | {r.batch} | {r.edits} | {r.seconds:.2f} | "
                   f"{r.seconds_per_edit:.3f} | {r.peak_mb:.0f} | {r.stats_seconds:.1f} |")
    return "\n".join(out)
