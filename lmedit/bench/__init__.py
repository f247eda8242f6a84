"""Benchmark runs: declared protocol, streamed results, resume, reports and plots."""
from .config import PROTOCOLS, RunConfig
from .report import compare, write_report
from .run import RunError, run

__all__ = ["PROTOCOLS", "RunConfig", "compare", "write_report", "RunError", "run"]
