"""Editing methods. Importing this package registers every built-in method."""
from . import ft  # noqa: F401  (registers ft-l, ft-m)
from .base import CompositeHandle, EditFailed, EditHandle, EditMethod, WeightEdit, WeightEditingMethod
from .registry import UnknownMethod, get_method, list_methods, register

__all__ = ["CompositeHandle", "EditFailed", "EditHandle", "EditMethod", "WeightEdit", "WeightEditingMethod",
           "UnknownMethod", "get_method", "list_methods", "register"]
