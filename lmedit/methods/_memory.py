"""Shared pieces of the methods that add memory or parameters next to a frozen model.

- `swap_module`: put a module (a wrapper) at a dotted path and get the old one back, so a
  wrapper can be installed on the first edit and the very same original object put back later.
- `frozen`: every parameter of the model has `requires_grad=False` inside the block, restored after.
- `request_batches`: prompt+target batches (the same tokenisation the evaluator uses).
- `target_nll`: teacher-forced mean NLL of the target tokens, per request (prompt positions masked),
  from the logits `target_logits` computes (only where targets are predicted).
- `fit_targets`: Adam on some parameters until the mean target NLL is low enough.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from ..evaluate.scoring import target_logits
from ..requests import EditRequest
from ..tokens import PromptTargetBatch, batch_prompt_targets


def swap_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Replace the submodule at `path` by `new`; returns the module that was there."""
    old = model.get_submodule(path)
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)
    return old


@contextmanager
def frozen(model: nn.Module):
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for n, p in model.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])
            p.grad = None


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def request_batch(tok, requests: Sequence[EditRequest], device) -> PromptTargetBatch:
    return batch_prompt_targets(tok, [r.prompt for r in requests], [r.target_new for r in requests]).to(device)


def target_nll(logits: torch.Tensor, batch: PromptTargetBatch, first: int = 0) -> torch.Tensor:
    """(B,) mean NLL of each request's target tokens (the logit at t-1 predicts token t).
    `logits` cover positions first, first+1, ... of the batch (see `target_logits`)."""
    logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
    tgt = batch.input_ids[:, first + 1:]
    mask = batch.target_mask[:, first + 1:].float()
    nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * mask
    return nll.sum(1) / mask.sum(1)


def fit_targets(model: nn.Module, batch: PromptTargetBatch, params, lr: float, num_steps: int,
                stop_loss: float) -> None:
    """At most `num_steps` Adam steps on `params` against the mean target NLL of `batch`; stops
    early once it is below `stop_loss`. Gradients flow only where the caller enabled them."""
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(num_steps):
        opt.zero_grad()
        logits, first = target_logits(model, batch)
        loss = target_nll(logits, batch, first).mean()
        if loss.item() < stop_loss:
            break
        loss.backward()
        opt.step()


def prompt_last_positions(batch: PromptTargetBatch) -> torch.Tensor:
    """(B,) index of each request's last prompt token."""
    return batch.prompt_lens - 1


class ForwardingWrapper(nn.Module):
    """A module that wraps `base` and still answers `.weight` / `.bias` like it (for code that
    reads the projection's weight through the adapter while the wrapper is installed)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return getattr(self.base, "bias", None)
