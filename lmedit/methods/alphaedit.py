"""AlphaEdit (Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing", ICLR).

MEMIT's multi-layer loop with the update projected onto the null space of the preserved keys:
  P_l = U Uᵀ, U = eigenvectors of C_l = E[kkᵀ] with eigenvalue < `nullspace_threshold`
        (times the largest eigenvalue when `nullspace_relative`); U is computed once per (model,
        layer, statistics, threshold) and cached in memory;
  ΔW_l = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + αI)⁻¹        (closed_form.alphaedit_update)
where K_p are the keys (at layer l) of the earlier edits still applied to this model. The update is
computed in the null-space basis (closed_form.alphaedit_update_in_basis), where the earlier edits
enter only through the r×r Gram matrix Σ (UᵀK_p)(UᵀK_p)ᵀ; that matrix is cached and extended as
edits arrive, so an edit costs the same after 10 or 10,000 earlier ones.

That state lives at class level, keyed weakly by the model (the registry builds a new method object
per call): each applied edit records its keys under an id, and its handle (`AlphaEditHandle`, a
WeightEdit) removes them again when the edit is restored, so a restored edit no longer constrains
later ones (the cached Gram matrix is then rebuilt from the keys that remain).
"""
from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field

import torch

from . import locate
from .base import WeightEdit
from .closed_form import alphaedit_update_in_basis, nullspace_basis
from .memit import MultiLayerHparams, _MultiLayer
from .registry import register


@dataclass
class AlphaEditHparams(MultiLayerHparams):
    nullspace_threshold: float = field(default=1e-2, metadata={"help": "eigenvalues of E[kkᵀ] below this span the null space"})
    nullspace_relative: bool = field(default=False, metadata={"help": "threshold is relative to the largest eigenvalue"})
    l2: float = field(default=1.0, metadata={"help": "α: ridge on ΔW (the paper's + I)"})

    def validate(self):
        super().validate()
        self.check(self.nullspace_threshold > 0, "nullspace_threshold must be > 0")
        self.check(self.l2 > 0, "l2 must be > 0")


class _AlphaState:
    """Per model: cached null-space bases and the keys of the edits currently applied."""

    def __init__(self):
        self.bases: dict[tuple, torch.Tensor] = {}  # (layer, statistics, threshold) -> U (d_in, r) float64
        self.keys: dict[int, dict[int, torch.Tensor]] = {}  # edit id -> layer -> (d_in, n) float32 CPU
        self._grams: dict[tuple, tuple[set[int], torch.Tensor]] = {}  # basis key -> (edit ids in it, Gram)

    def previous_keys(self, layer: int) -> torch.Tensor | None:
        ks = [k[layer] for k in self.keys.values() if layer in k]
        return torch.cat(ks, dim=1) if ks else None

    def previous_gram(self, basis_key: tuple, dtype: torch.dtype) -> torch.Tensor | None:
        """Σ (UᵀK_p)(UᵀK_p)ᵀ over the applied edits' keys at the basis's layer (None if there are none).
        Extended with the edits added since the last call; rebuilt when an edit was removed."""
        layer, U = basis_key[0], self.bases[basis_key]
        ids = {i for i, k in self.keys.items() if layer in k}
        if not ids:
            return None
        seen, G = self._grams.get(basis_key, (set(), None))
        if not seen <= ids or G is None or G.dtype != dtype:
            seen, G = set(), torch.zeros(U.shape[1], U.shape[1], dtype=dtype)
        for i in sorted(ids - seen):
            Kr = U.to(dtype).T @ self.keys[i][layer].to(dtype)
            G = G + Kr @ Kr.T
        self._grams[basis_key] = (ids, G)
        return G


_STATES: "weakref.WeakKeyDictionary[torch.nn.Module, _AlphaState]" = weakref.WeakKeyDictionary()
_IDS = itertools.count()


def alphaedit_state(model) -> _AlphaState:
    return _STATES.setdefault(model, _AlphaState())


class AlphaEditHandle(WeightEdit):
    """A WeightEdit that also forgets the edit's keys when restored."""

    def __init__(self, base: WeightEdit, state: _AlphaState, edit_id: int):
        self.__dict__.update(base.__dict__)
        self._state, self.edit_id = state, edit_id

    def restore(self) -> None:
        super().restore()
        self._state.keys.pop(self.edit_id, None)


@register
class AlphaEdit(_MultiLayer):
    name = "alphaedit"
    hparams_cls = AlphaEditHparams

    def begin(self, model, adapter, layers, hp, moments):
        state = alphaedit_state(model)
        basis_keys = {}
        for l in layers:
            key = (l, hp.mom2_n_tokens, str(hp.mom2_corpus), hp.nullspace_threshold, hp.nullspace_relative)
            if key not in state.bases:
                U = nullspace_basis(moments[l], hp.nullspace_threshold, hp.nullspace_relative)
                if U.shape[1] == 0:  # every update would be zero: say so instead of editing nothing
                    low = float(torch.linalg.eigvalsh(moments[l].double()).min())
                    raise ValueError(f"alphaedit: the null space at layer {l} is empty (no eigenvalue of E[kkᵀ] "
                                     f"below nullspace_threshold {hp.nullspace_threshold:g}"
                                     f"{' x the largest' if hp.nullspace_relative else ''}; the smallest is "
                                     f"{low:.3g}); raise the threshold")
                state.bases[key] = U
            basis_keys[l] = key
        return {"state": state, "basis_keys": basis_keys, "new_keys": {}}

    def layer_update(self, model, adapter, layer, K, R, C, hp, ctx):
        state, key = ctx["state"], ctx["basis_keys"][layer]
        gram = state.previous_gram(key, hp.dtype)
        return alphaedit_update_in_basis(K, R, state.bases[key].to(K.device), gram, alpha=hp.l2, dtype=hp.dtype)

    def after_layer(self, ctx, layer, K):
        ctx["new_keys"][layer] = K.detach().float().cpu()
        self._ctx = ctx

    def resume_state(self, model) -> dict:
        return {"keys": list(alphaedit_state(model).keys.values())}

    def load_resume_state(self, model, tok, hparams, state: dict) -> None:
        keys = alphaedit_state(model).keys
        for k in state["keys"]:
            keys[next(_IDS)] = k

    def apply(self, model, tok, adapter, requests, hp):
        self._ctx = None
        handle = super().apply(model, tok, adapter, requests, hp)
        edit_id = next(_IDS)
        state = alphaedit_state(model)
        state.keys[edit_id] = dict(self._ctx["new_keys"]) if self._ctx else {}
        return AlphaEditHandle(handle, state, edit_id)
