"""PMET (Li et al. 2024, "PMET: Precise Model Editing in a Transformer", AAAI).

What is implemented (from the paper's description; where it is silent the choice is stated):
  * Target optimisation optimises two vectors per request at the LAST edit layer L, at the subject's
    last token: δ_attn added to the output of the attention output projection (MHSA hidden state)
    and δ_ffn added to the output of the MLP output projection (FFN hidden state), jointly, with
    the MEMIT loss (NLL over the contexts + KL on "{subject} is a" + weight decay of each δ
    relative to its own component's output norm, each ‖δ‖ clamped to clamp·‖component output‖).
  * Only the FFN part is used to update weights: the target of the FFN hidden state at L is
    v_i = m_i + δ_ffn_i (m_i: FFN output at L for the bare prompt). MHSA weights are not changed;
    δ_attn only helps the optimisation (the paper: MHSA holds extraction patterns, not facts).
  * For each edit layer l_j in order (on the model updated so far) the residual is
    R = (v − m_L(current)) / sqrt(n − j)  (the paper's square-root spread) with m_L(current) the
    FFN output at L, and ΔW = R Kᵀ (λC + K Kᵀ)⁻¹ as in MEMIT. Choice: "current" is re-read at the
    FFN output of L after every layer, as MEMIT re-reads the residual stream.
Ablation switches (hparams): `spread: linear` spreads the residual as MEMIT does, `attn_delta: false`
optimises δ_ffn alone. On SmolLM2-135M the square-root spread is what holds PMET back (docs/BENCHMARKS.md):
the FFN output at L hardly moves when earlier layers are edited (their change enters the residual stream,
not m_L), so every layer is given most of the shift again and the sum overshoots.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import locate
from .memit import MEMITHparams, _MultiLayer
from .registry import register

SPREADS = ("sqrt", "linear")


@dataclass
class PMETHparams(MEMITHparams):
    # ablation switches; the defaults are PMET as published
    spread: str = field(default="sqrt", metadata={"help": "share of the residual per edit layer: 'sqrt' (PMET) "
                                                          "or 'linear' (MEMIT's 1/(layers left))"})
    attn_delta: bool = field(default=True, metadata={"help": "optimise δ_attn beside δ_ffn (PMET); False: δ_ffn alone"})

    def validate(self):
        super().validate()
        self.check(self.spread in SPREADS, f"spread must be one of {SPREADS}, got {self.spread!r}")


@register
class PMET(_MultiLayer):
    name = "pmet"
    hparams_cls = PMETHparams

    def spread_rule(self, hp):
        return hp.spread

    def sites(self, adapter, last, hp):
        ffn = locate.Site(adapter.mlp_out_path(last), norm_ref="output")
        return [locate.Site(adapter.attn_out_path(last), norm_ref="output"), ffn] if hp.attn_delta else [ffn]

    def residual_path(self, adapter, last):
        return adapter.mlp_out_path(last)

    def target(self, res, adapter, last, hp):
        p = adapter.mlp_out_path(last)
        return res.init[p] + res.deltas[p]
