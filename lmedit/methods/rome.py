"""ROME (Meng et al. 2022): one fact, one layer, a rank-one update of the MLP output projection.

Steps for a request at layer l (see `locate` for the shared plumbing):
  1. keys: k̄ = input of mlp_out(l) at the subject's last token averaged over the bare prompt and the
     fixed prefixes; k_bare = the same for the bare prompt only.
  2. target: δ added to mlp_out(l)'s output at the subject's last token, optimised so the model says
     target_new (NLL + KL + weight decay, ‖δ‖ ≤ clamp·‖v_bare‖); v* = v_bare + δ, v_bare = W k_bare + b.
  3. update (closed_form.rome_update), with C = E[kkᵀ] at layer l (its scale cancels):
       rome   ΔW = (v* − W k_bare − b) (C⁻¹k̄)ᵀ / (k_bareᵀ C⁻¹ k̄)   (as ROME's implementation: the
              direction uses the averaged key, the inserted key is the bare prompt's; ΔW k_bare = δ)
       r-rome ΔW = (v* − W k̄ − b) (C⁻¹k̄)ᵀ / (k̄ᵀ C⁻¹ k̄)             (Gupta et al. 2024, "Rebuilding
              ROME": the same averaged key in every place, which avoids the disabling edits that
              make sequential ROME collapse; (W+ΔW) k̄ + b = v*)
"""
from __future__ import annotations

from dataclasses import dataclass

from . import locate
from .base import WeightEditingMethod
from .closed_form import rome_update
from .registry import register


@dataclass
class ROMEHparams(locate.LocateHparams):
    def validate(self):
        super().validate()
        self.check(len(self.layers) == 1, "ROME edits exactly one layer")


class _RankOne(WeightEditingMethod):
    hparams_cls = ROMEHparams
    needs_subject = True
    supports_batch = False
    consistent_key = False

    def params_to_edit(self, adapter, hp):
        return [adapter.param_name(adapter.mlp_out_path(hp.layers[0]))]

    def execute(self, model, tok, adapter, requests, hp):
        if len(requests) != 1:
            raise ValueError(f"{self.name} edits one request at a time, got {len(requests)}")
        layer = adapter._check_layer(hp.layers[0])
        C = locate.cached_second_moments(model, tok, adapter, [layer], n_tokens=hp.mom2_n_tokens,
                                         corpus=hp.mom2_corpus)[layer]
        keys = locate.compute_keys(model, tok, adapter, requests, [layer], hp.prefixes)
        site = locate.Site(adapter.mlp_out_path(layer), norm_ref="output")
        res = locate.optimise_targets(model, tok, requests, [site], adapter=adapter, layer=layer,
                                      **hp.target_kwargs())
        k_mean, k_bare = keys.mean[layer][0], keys.bare[layer][0]
        v_star = res.init[site.path][0] + res.deltas[site.path][0]  # v_bare + δ
        k = k_mean if self.consistent_key else k_bare
        # rome_update works on W k; mlp_out may have a bias, so insert v* − b
        m = adapter.mlp_out(layer)
        bias = m.bias.float() if getattr(m, "bias", None) is not None else 0.0
        W = adapter.as_out_in(adapter.mlp_out_weight(layer)).detach()
        dW = rome_update(W, C.to(W.device), k, (v_star - bias), direction_key=k_mean, dtype=hp.dtype)
        locate.add_to_mlp_out(adapter, layer, dW)


@register
class ROME(_RankOne):
    name = "rome"


@register
class RROME(_RankOne):
    name = "r-rome"
    consistent_key = True
