"""MEMIT (Meng et al. 2023): many facts at once, spread over several layers.

For requests i and edit layers l_0 < … < l_{n-1} = L:
  1. target: δ_i added to mlp_out(L)'s output (= the residual stream after block L; for families that
     normalise the MLP output before the residual, Gemma 2/3, δ_i is added to the residual itself) at the subject's
     last token, optimised for all requests in one batch (`locate.optimise_targets`), with
     ‖δ_i‖ ≤ clamp·‖h_i‖ where h_i is the residual after block L; z_i = h_i + δ_i.
  2. for each layer l_j in order, on the model as updated so far:
       K   = keys at l_j (averaged over the contexts), one column per request
       R   = spread_residual(z − h_L(current), j, n) = (z − h_L) / (n − j)
       (post-norm families: R becomes the change of mlp_out(l)'s output whose normalised value changes the
        residual by R, `locate.post_norm_preimage`)
       ΔW  = R Kᵀ (λC + K Kᵀ)⁻¹              (closed_form.memit_update, C = E[kkᵀ], λ = mom2_weight)
       W_l += ΔW
`_MultiLayer` carries this loop; PMET, EMMET and AlphaEdit change its target sites, spread rule or
closed-form update.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import locate
from .base import WeightEditingMethod
from .closed_form import memit_update, spread_residual
from .registry import register


@dataclass
class MultiLayerHparams(locate.LocateHparams):
    """What every method of the MEMIT loop shares (EMMET and AlphaEdit have no λ)."""
    layers: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7], metadata={"help": "edited layers; targets are optimised at the last"})
    clamp_norm_factor: float = field(default=0.75, metadata={"help": "‖δ‖ is clamped to this times ‖h‖ (the residual)"})
    v_steps: int = field(default=25, metadata={"help": "optimisation steps of the target deltas"})
    v_weight_decay: float = field(default=0.5, metadata={"help": "weight of ‖δ‖²/‖h‖² in the target loss"})


@dataclass
class MEMITHparams(MultiLayerHparams):
    mom2_weight: float = field(default=15000.0, metadata={"help": "λ: weight of the preserved-key second moment C"})

    def validate(self):
        super().validate()
        self.check(self.mom2_weight >= 0, "mom2_weight must be >= 0")


class _MultiLayer(WeightEditingMethod):
    """The MEMIT loop; subclasses override `sites`, `residual_path`, `spread_rule`, `layer_update`."""
    needs_subject = True
    supports_batch = True

    def params_to_edit(self, adapter, hp):
        return [adapter.param_name(adapter.mlp_out_path(l)) for l in locate.sorted_layers(adapter, hp.layers)]

    def spread_rule(self, hp) -> str:
        """How the missing shift is shared among the edit layers (closed_form.spread_residual)."""
        return "linear"

    def sites(self, adapter, last: int, hp) -> list[locate.Site]:
        if adapter.mlp_post_norm_path(last):  # the MLP output is normalised before the residual: δ goes there
            return [locate.Site(adapter.block_path(last), norm_ref="residual", block=adapter.block_path(last),
                                width=adapter.hidden_size)]
        return [locate.Site(adapter.mlp_out_path(last), norm_ref="residual", block=adapter.block_path(last))]

    def residual_path(self, adapter, last: int) -> str:
        """The module whose output (at the subject) the target z refers to."""
        return adapter.block_path(last)

    def target(self, res: locate.TargetResult, adapter, last: int, hp) -> torch.Tensor:
        """z: (n, d) the value the residual path should take."""
        site = self.sites(adapter, last, hp)[-1]
        return res.ref[site.path] + res.deltas[site.path]

    def layer_update(self, model, adapter, layer, K, R, C, hp, ctx) -> torch.Tensor:
        return memit_update(K, R, C, hp.mom2_weight, dtype=hp.dtype)

    def execute(self, model, tok, adapter, requests, hp):
        layers = locate.sorted_layers(adapter, hp.layers)
        last = layers[-1]
        moments = locate.cached_second_moments(model, tok, adapter, layers, n_tokens=hp.mom2_n_tokens,
                                               corpus=hp.mom2_corpus)
        res = locate.optimise_targets(model, tok, requests, self.sites(adapter, last, hp), adapter=adapter, layer=last,
                                      **hp.target_kwargs())
        z = self.target(res, adapter, last, hp)
        rpath = self.residual_path(adapter, last)
        ctx = self.begin(model, adapter, layers, hp, moments)
        for j, layer in enumerate(layers):
            # only where R is a residual change (PMET's R is a change of the projection output at L itself)
            post_norm = adapter.mlp_post_norm_path(layer) if rpath == adapter.block_path(last) else None
            outputs = [rpath] + ([adapter.mlp_out_path(layer)] if post_norm else [])
            keys = locate.compute_keys(model, tok, adapter, requests, [layer], hp.prefixes, outputs=outputs)
            K = keys.mean[layer].T  # (d_in, n)
            R = spread_residual(z - keys.outputs[rpath], j, len(layers), self.spread_rule(hp))  # (n, d) residual change
            if post_norm:  # the residual change this layer's normalised MLP output must make -> its projection's
                R = locate.post_norm_preimage(model.get_submodule(post_norm), keys.outputs[adapter.mlp_out_path(layer)], R)
            R = R.T  # (d_out, n)
            C = moments[layer].to(K.device)
            dW = self.layer_update(model, adapter, layer, K, R, C, hp, ctx)
            locate.add_to_mlp_out(adapter, layer, dW)
            self.after_layer(ctx, layer, K)

    # hooks for stateful subclasses (AlphaEdit)
    def begin(self, model, adapter, layers, hp, moments):
        return None

    def after_layer(self, ctx, layer, K) -> None:
        pass


@register
class MEMIT(_MultiLayer):
    name = "memit"
    hparams_cls = MEMITHparams
