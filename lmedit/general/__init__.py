"""General-ability evaluation: is the model still able to do other things after N edits?

Tasks are data (tasks.yaml): GLUE-style classification (sst2, rte, mrpc, cola, nli, sentiment_analysis, boolq),
multiple choice (mmlu, dialogue) scored by option log-likelihood, and gsm8k by greedy generation.
"""
from .metrics import accuracy, f1, majority_rate, mcc
from .runner import evaluate_general
from .tasks import (GeneralDataError, TaskSpec, UnknownTask, extract_number, get_task, list_tasks,
                    normalize_number)

__all__ = ["evaluate_general", "list_tasks", "get_task", "TaskSpec", "UnknownTask", "GeneralDataError",
           "extract_number", "normalize_number", "accuracy", "f1", "mcc", "majority_rate"]
