"""Run directories and their bookkeeping (README, Runs): files written atomically, compute and
budgets, summary.json, loggers. The trainer calls these; the math never does."""
from rlzoo.runs.files import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    checkpoint_path,
    load_checkpoint,
    parse_jsonl,
    read_jsonl,
    truncate_jsonl,
)
from rlzoo.runs.lock import is_held, run_lock
from rlzoo.runs.loggers import JsonlLogger, WandbLogger
from rlzoo.runs.progress import (
    Compute,
    Phase,
    Progress,
    ProgressBar,
    budget_spent,
    is_finished,
    peak_memory_bytes,
)
from rlzoo.runs.summary import (
    format_metrics,
    iteration_record,
    merge_update_stats,
    print_report,
    read_summary,
    write_summary,
)

__all__ = ["CheckpointError", "Compute", "JsonlLogger", "Phase", "Progress", "ProgressBar", "WandbLogger",
           "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "budget_spent", "checkpoint_path",
           "format_metrics", "is_finished", "is_held", "iteration_record", "load_checkpoint", "merge_update_stats",
           "parse_jsonl", "peak_memory_bytes", "print_report", "read_jsonl", "read_summary",
           "run_lock", "truncate_jsonl", "write_summary"]
