"""Fine-tuning baselines.

FT-L (Zhu et al. 2020, as used in ROME/EasyEdit): tune the MLP output projection of chosen
layers so the *last prompt position* predicts the target tokens, keeping every weight within
an L-infinity ball of radius `norm_constraint` around its original value.

FT-M (EasyEdit's variant): same layers, but teacher-forced cross-entropy on the target tokens
only (the prompt positions are masked out), no norm constraint by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..hparams import HParams
from ..tokens import batch_prompt_targets
from ._memory import target_logits, target_nll
from .base import WeightEditingMethod
from .registry import register


@dataclass
class FTHparams(HParams):
    layers: list[int] = field(default_factory=lambda: [-10], metadata={"help": "layers whose MLP output projection is tuned"})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate"})
    num_steps: int = field(default=25, metadata={"help": "optimisation steps over all requests"})
    batch_size: int = field(default=8, metadata={"help": "requests per optimisation step"})
    norm_constraint: float = field(default=0.0, metadata={"help": "L-inf radius around the original weights; 0 = none"})
    weight_decay: float = 0.0
    objective: str = field(default="target", metadata={"help": "'target' (masked CE on target tokens) or 'prompt_last'"})
    stop_loss: float = field(default=1e-3, metadata={"help": "stop early once the mean loss is below this"})

    def validate(self):
        self.check(len(self.layers) > 0, "layers must list at least one layer")
        self.check(self.lr > 0, "lr must be > 0")
        self.check(self.num_steps >= 1, "num_steps must be >= 1")
        self.check(self.batch_size >= 1, "batch_size must be >= 1")
        self.check(self.norm_constraint >= 0, "norm_constraint must be >= 0")
        self.check(self.objective in ("target", "prompt_last"), "objective must be 'target' or 'prompt_last'")


def ft_loss(model, batch, objective: str) -> torch.Tensor:
    """Mean over requests of the mean target-token NLL under the chosen objective."""
    logits, first = target_logits(model, batch)  # positions first.. only
    if objective == "target":
        return target_nll(logits, batch, first).mean()
    # prompt_last: the last prompt position should put mass on every target token
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.arange(len(batch.targets), device=logp.device)
    last = logp[rows, batch.prompt_lens - 1 - first]  # (B, V)
    losses = [-last[i, torch.tensor(t, device=logp.device)].mean() for i, t in enumerate(batch.targets)]
    return torch.stack(losses).mean()


class _FineTune(WeightEditingMethod):
    hparams_cls = FTHparams

    def params_to_edit(self, adapter, hp):
        return [adapter.param_name(adapter.mlp_out_path(layer)) for layer in hp.layers]

    def execute(self, model, tok, adapter, requests, hp):
        names = set(self.params_to_edit(adapter, hp))
        params = {n: p for n, p in model.named_parameters() if n in names}
        originals = {n: p.detach().clone() for n, p in params.items()} if hp.norm_constraint > 0 else {}
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        device = next(model.parameters()).device
        batches = [
            batch_prompt_targets(tok, [r.prompt for r in requests[i:i + hp.batch_size]],
                                 [r.target_new for r in requests[i:i + hp.batch_size]]).to(device)
            for i in range(0, len(requests), hp.batch_size)
        ]
        # the blocks below the lowest tuned layer compute the same thing at every step
        replays = [adapter.replay_below(min(hp.layers, key=lambda l: l % adapter.n_layers),
                                        input_ids=b.input_ids, attention_mask=b.attention_mask) for b in batches]
        try:
            for n, p in model.named_parameters():
                p.requires_grad_(n in names)
            opt = torch.optim.Adam(list(params.values()), lr=hp.lr, weight_decay=hp.weight_decay)
            for _ in range(hp.num_steps):
                total = 0.0
                for batch, replay in zip(batches, replays):
                    opt.zero_grad()
                    with replay:
                        loss = ft_loss(model, batch, hp.objective)
                        loss.backward()
                    opt.step()
                    total += loss.item() * len(batch.targets)
                    if originals:
                        with torch.no_grad():
                            for n, p in params.items():
                                lo, eps = originals[n], hp.norm_constraint
                                p.copy_(torch.clamp(p, lo - eps, lo + eps))
                if total / len(requests) < hp.stop_loss:
                    break
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(grad_flags[n])
                p.grad = None


@register
class FTL(_FineTune):
    name = "ft-l"


@register
class FTM(_FineTune):
    name = "ft-m"
