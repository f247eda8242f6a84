from .evaluator import METRIC_DOCS, EvalConfig, observe, score, summarize
from .scoring import TFScore, generate, teacher_forced

__all__ = ["METRIC_DOCS", "EvalConfig", "observe", "score", "summarize", "TFScore", "generate", "teacher_forced"]
