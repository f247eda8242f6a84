"""Temporary forward hooks, always removed on exit (even on error).

    with Trace(model, ["model.layers.3.mlp.down_proj"], keep_input=True) as tr:
        model(**batch)
    keys = tr["model.layers.3.mlp.down_proj"].input   # (B, T, d_in)

`edit_output(name, output) -> output` may replace a module's output, which is how
methods insert a vector into the residual stream while optimising it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class Captured:
    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


def _first(x):
    return x[0] if isinstance(x, tuple) else x


class Trace:
    def __init__(self, model: nn.Module, names: list[str], keep_input: bool = False,
                 keep_output: bool = False, edit_output: Callable | None = None, detach: bool = True):
        self.model, self.names = model, list(names)
        self.keep_input, self.keep_output, self.edit_output, self.detach = keep_input, keep_output, edit_output, detach
        self.captured: dict[str, Captured] = {n: Captured() for n in self.names}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            cap = self.captured[name]
            if self.keep_input:
                x = _first(inputs)
                cap.input = x.detach() if self.detach else x
            if self.edit_output is not None:
                output = self.edit_output(name, output)
            if self.keep_output:
                y = _first(output)
                cap.output = y.detach() if self.detach else y
            return output
        return hook

    def __enter__(self) -> "Trace":
        try:
            for n in self.names:
                self._handles.append(self.model.get_submodule(n).register_forward_hook(self._hook(n)))
        except Exception:
            self.close()
            raise
        return self

    def __getitem__(self, name: str) -> Captured:
        return self.captured[name]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.close()
