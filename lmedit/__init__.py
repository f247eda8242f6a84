"""lmedit: edit, measure and undo the knowledge inside causal language models."""
from .editor import EditResult, Editor
from .evaluate import EvalConfig
from .hparams import HParams, InvalidHparams, load_hparams
from .methods import get_method, list_methods
from .models import ModelAdapter, load_model
from .requests import EditRequest, InvalidRequest, PromptAnswer

__version__ = "0.1.0"
__all__ = ["EditResult", "Editor", "EvalConfig", "HParams", "InvalidHparams", "load_hparams", "get_method",
           "list_methods", "ModelAdapter", "load_model", "EditRequest", "InvalidRequest", "PromptAnswer"]
