"""EMMET (Gupta et al. 2024, "A unified framework for model editing"): MEMIT's multi-layer loop
with ROME's equality constraint, batched. At each edit layer the update is
    ΔW = R (Kᵀ C⁻¹ K + ε·mean diag · I)⁻¹ Kᵀ C⁻¹        (closed_form.emmet_update)
the least-C-norm update that meets ΔW K = R (exactly when ε = 0). The scale of C cancels, so there
is no λ; `ridge` ε only conditions the n×n solve (edits whose keys are nearly collinear).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .closed_form import emmet_update
from .memit import MultiLayerHparams, _MultiLayer
from .registry import register


@dataclass
class EMMETHparams(MultiLayerHparams):
    ridge: float = field(default=1e-3, metadata={"help": "relative ridge ε on KᵀC⁻¹K (0 = exact constraints)"})

    def validate(self):
        super().validate()
        self.check(self.ridge >= 0, "ridge must be >= 0")


@register
class EMMET(_MultiLayer):
    name = "emmet"
    hparams_cls = EMMETHparams

    def layer_update(self, model, adapter, layer, K, R, C, hp, ctx):
        return emmet_update(K, R, C, ridge=hp.ridge, dtype=hp.dtype)
