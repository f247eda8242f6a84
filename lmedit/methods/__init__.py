"""Editing methods. Importing this package registers every built-in method."""
from . import ft  # noqa: F401  (registers ft-l, ft-m)
from . import alphaedit, emmet, memit, pmet, rome  # noqa: F401  (locate-then-edit: rome, r-rome, memit, pmet, emmet, alphaedit)
from . import grace, lora, melo, tpatcher, wise  # noqa: F401  (memory / added-parameter lifelong editors)
from . import ike, memprompt, serac  # noqa: F401  (in-context / memory editors: retrieved facts in front, SERAC routing)
from .base import CompositeHandle, EditFailed, EditHandle, EditMethod, WeightEdit, WeightEditingMethod
from .registry import UnknownMethod, get_method, list_methods, register

__all__ = ["CompositeHandle", "EditFailed", "EditHandle", "EditMethod", "WeightEdit", "WeightEditingMethod",
           "UnknownMethod", "get_method", "list_methods", "register"]
