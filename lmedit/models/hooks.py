"""Temporary forward hooks, always removed on exit (even on error).

    with Trace(model, ["model.layers.3.mlp.down_proj"], keep_input=True) as tr:
        model(**batch)
    keys = tr["model.layers.3.mlp.down_proj"].input   # (B, T, d_in)

`edit_output(name, output) -> output` may replace a module's output, which is how
methods insert a vector into the residual stream while optimising it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

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


class _StopForward(Exception):
    pass


def forward_until(model: nn.Module, modules: Sequence[str | nn.Module], **inputs) -> None:
    """Run the model only until every one of `modules` (paths or module objects) has run, then stop:
    the blocks above are skipped. Hooks registered earlier on those modules (a Trace) still see
    their inputs/outputs."""
    mods = {id(m): m for m in (model.get_submodule(x) if isinstance(x, str) else x for x in modules)}
    pending = set(mods)

    def seen(key: int):
        def hook(_m, _inputs, _output):
            pending.discard(key)
            if not pending:
                raise _StopForward
        return hook

    handles = [m.register_forward_hook(seen(k)) for k, m in mods.items()]
    try:
        model(**inputs)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


class _Replay(nn.Module):
    """Stands in for a block: returns what the real block stack produced, whatever it is given."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def _detached(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, tuple):
        return tuple(_detached(v) for v in x)
    return x


class ReplayLowerBlocks:
    """Skip the blocks below `layer` while the same inputs are run again and again.

    Optimisation loops that change only things at or above `layer` (a codebook value, a side
    memory, a LoRA adapter, one block's weights) feed the same batch to the model on every step, so
    blocks 0..layer-1 compute the same output every time. On entry the model runs once with the
    given inputs and keeps what block `layer - 1` returned; inside the `with`, blocks 0..layer-1 are
    stand-ins that return it (every stand-in returns the same object, so the model's own loop over
    its blocks sees the format it expects). The original block objects are put back on exit.

    Only valid for calls with exactly the inputs given here: the stand-ins ignore their input. The
    output is captured on the first entry; entering again (a loop over several fixed batches, one
    replay each) reuses it. Hooks on the replaced blocks do not run inside the `with`.
    """

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, layer: int, **inputs):
        self.model, self.blocks, self.layer, self.inputs = model, blocks, layer, inputs
        self._originals: list[nn.Module] = []
        self._replay: _Replay | None = None

    def __enter__(self) -> "ReplayLowerBlocks":
        if self.layer <= 0:
            return self
        if self._replay is None:
            self._replay = self._capture()
        self._originals = [self.blocks[i] for i in range(self.layer)]
        for i in range(self.layer):
            self.blocks[i] = self._replay
        return self

    def _capture(self) -> _Replay:
        captured = {}

        def grab(_m, _inputs, output):
            captured["out"] = _detached(output)

        block = self.blocks[self.layer - 1]
        h = block.register_forward_hook(grab)
        try:  # nothing above this block is needed (or may be ready to run yet)
            with torch.no_grad():
                forward_until(self.model, [block], **self.inputs)
        finally:
            h.remove()
        return _Replay(captured["out"])

    def __exit__(self, *exc) -> None:
        for i, block in enumerate(self._originals):
            self.blocks[i] = block
        self._originals = []
