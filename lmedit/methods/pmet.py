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
"""
from __future__ import annotations

from dataclasses import dataclass

from . import locate
from .memit import MEMITHparams, _MultiLayer
from .registry import register


@dataclass
class PMETHparams(MEMITHparams):
    pass


@register
class PMET(_MultiLayer):
    name = "pmet"
    hparams_cls = PMETHparams
    spread_rule = "sqrt"

    def sites(self, adapter, last):
        return [locate.Site(adapter.attn_out_path(last), norm_ref="output"),
                locate.Site(adapter.mlp_out_path(last), norm_ref="output")]

    def residual_path(self, adapter, last):
        return adapter.mlp_out_path(last)

    def target(self, res, adapter, last):
        p = adapter.mlp_out_path(last)
        return res.init[p] + res.deltas[p]
