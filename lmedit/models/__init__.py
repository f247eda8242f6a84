from .adapters import ARCHITECTURES, ArchSpec, ModelAdapter, UnsupportedArchitecture
from .catalog import CATALOG, PackagedModel
from .fetch import ModelFetchError, cached_path, fetch
from .hooks import Trace
from .loading import load_model, resolve

__all__ = ["ARCHITECTURES", "ArchSpec", "ModelAdapter", "UnsupportedArchitecture", "CATALOG", "PackagedModel",
           "ModelFetchError", "cached_path", "fetch", "Trace", "load_model", "resolve"]
