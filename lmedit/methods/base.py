"""What every editing method is: an HParams class, declared needs, and `apply`.

Invariant: `apply` either edits the model and returns a handle whose `restore()` puts it
back exactly (bit-identical weights), or raises and leaves the model as it found it.
The editor never branches on a method's name; it reads the attributes below.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from ..hparams import HParams
from ..models.adapters import ModelAdapter
from ..requests import EditRequest


class EditFailed(RuntimeError):
    """The method could not produce a valid edit (e.g. non-finite weights); the model was restored."""


class EditHandle:
    """Undo for one applied edit."""

    def restore(self) -> None:
        raise NotImplementedError


class WeightEdit(EditHandle):
    """Original values of the parameters an edit touched; restoring copies them back."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"parameters not in model: {missing}")
        self.model = model
        self.params = {n: params[n] for n in dict.fromkeys(names)}
        self.originals = {n: p.detach().clone() for n, p in self.params.items()}
        self.restored = False

    def deltas(self) -> dict[str, torch.Tensor]:
        """What the edit added to each parameter (current - original)."""
        return {n: (p.detach() - self.originals[n]) for n, p in self.params.items()}

    def restore(self) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.originals[n])
        self.restored = True

    def all_finite(self) -> bool:
        return all(torch.isfinite(p).all().item() for p in self.params.values())


class CompositeHandle(EditHandle):
    """Several edits applied in order; restored in reverse order."""

    def __init__(self, handles: Sequence[EditHandle] = ()):
        self.handles = list(handles)

    def append(self, h: EditHandle) -> None:
        self.handles.append(h)

    def restore(self) -> None:
        while self.handles:
            self.handles.pop().restore()


class EditMethod:
    name: ClassVar[str]
    hparams_cls: ClassVar[type[HParams]]
    needs_subject: ClassVar[bool] = False
    supports_batch: ClassVar[bool] = True  # can edit several requests in one apply
    edits_weights: ClassVar[bool] = True

    def apply(self, model: nn.Module, tok, adapter: ModelAdapter, requests: Sequence[EditRequest],
              hparams: HParams) -> EditHandle:
        raise NotImplementedError

    def can_resume(self) -> bool:
        """Whether a sequential run of this method can be saved and resumed half-way: weight edits
        always can (the weights are saved); other methods when they implement `resume_state`."""
        return self.edits_weights or type(self).resume_state is not EditMethod.resume_state

    def resume_state(self, model: nn.Module) -> dict | None:
        """What, besides the edited weights, a resumed sequential run needs (AlphaEdit: the keys of
        the edits so far; GRACE: its codebook records; IKE: its stored facts); None when the weights
        say it all. Plain tensors, strings and numbers only (it is saved with torch.save)."""
        return None

    def load_resume_state(self, model: nn.Module, tok, hparams: HParams, state: dict) -> None:
        """Put back what `resume_state` returned, on a model that carries the saved weights."""


class WeightEditingMethod(EditMethod):
    """A method that changes existing parameters in place; snapshot + rollback come for free."""

    def params_to_edit(self, adapter: ModelAdapter, hparams: HParams) -> list[str]:
        raise NotImplementedError

    def execute(self, model: nn.Module, tok, adapter: ModelAdapter, requests: Sequence[EditRequest],
                hparams: HParams) -> None:
        raise NotImplementedError

    def apply(self, model, tok, adapter, requests, hparams) -> WeightEdit:
        handle = WeightEdit(model, self.params_to_edit(adapter, hparams))
        try:
            self.execute(model, tok, adapter, requests, hparams)
        except BaseException:
            handle.restore()
            raise
        if not handle.all_finite():
            handle.restore()
            raise EditFailed(f"{self.name} produced non-finite weights; the model was restored")
        return handle
