"""`rlzoo-train --nproc_per_node=N ...`: one run on N ranks of this machine, launched through
torchrun's own machinery (torch.distributed.run), with a report a user can read when a rank dies.

torchrun prints some forty lines when one of its processes dies, and the survivors, stopped by
it, can only say they were sent SIGTERM. This launcher holds the run directory (its ranks write
for it), keeps every rank's output in <run_dir>/ranks/ (rank 0's is also shown), and when a rank
dies says in one line which rank, how (its signal or exit code) and where its output is; the run's
summary.json records the same under `failed_rank`. The ranks themselves are the ones plain torchrun
starts (`torchrun --standalone --nproc_per_node=N -m rlzoo.commands.train ...` works too).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from rlzoo.errors import EXIT_FAILED, redact
from rlzoo.runs.lock import LOCK_HELD

RANK_LOGS = "ranks"


def launch(nproc: int, argv: list[str], run_dir: Path) -> None:
    """Run `rlzoo.commands.train argv` on `nproc` ranks of this machine (the caller validated the config
    and holds the run directory's lock); a dead rank ends it with one line and exit code 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.elastic.agent.server.api",
                 "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # (its report of a dead rank is replaced by ours)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    logs = Path(run_dir) / RANK_LOGS
    os.environ[LOCK_HELD] = f"{os.getpid()}:{Path(run_dir).resolve()}"
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # (torchrun's own default, without its warning)
    print(f"[rlzoo] {nproc} ranks; each rank's output (stdout.log, stderr.log): {logs}/{run_id}_*/attempt_0/<rank>/; "
          f"rank 0's stdout is shown", flush=True)
    # (every rank's stderr only to its file: the one line that ends a failed run is the launcher's)
    args = parse_args(["--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--rdzv-id={run_id}",
                       f"--nproc_per_node={nproc}", "--log-dir", str(logs), "--redirects", "3", "--tee", "1",
                       "--local-ranks-filter", "0", "-m", "rlzoo.commands.train", *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        what, record = describe(exc.failures, logs, run_id)
        record_failure(run_dir, what, record)
        print(f"rlzoo-train: error: {what}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_FAILED) from None
    log = _rank_log(logs, run_id, 0)
    if log is not None and log.stat().st_size:
        print(f"[rlzoo] rank 0 wrote warnings to {log}", flush=True)


def describe(failures: dict, logs: Path, run_id: str) -> tuple[str, dict]:
    """(one line, record) of the rank that failed first: one killed by a signal before one that
    exited with an error (a killed rank's peers fail in their next collective), and never one the
    launcher stopped after it (SIGTERM, or the exit code 143 of a rank that recorded SIGTERM)."""
    stopped = {-signal.SIGTERM, 128 + signal.SIGTERM}
    rank, failure = min(failures.items(), key=lambda item: (item[1].exitcode in stopped, item[1].exitcode >= 0,
                                                            item[1].timestamp, item[0]))
    log = _rank_log(logs, run_id, failure.local_rank)
    if failure.exitcode < 0:
        name = signal.Signals(-failure.exitcode).name
        how = f"was killed by {name}" + (" (the kernel's out-of-memory killer sends it; so does kill -9)"
                                         if name == "SIGKILL" else "")
    else:
        last = _last_line(log) if log else ""
        how = f"failed with exit code {failure.exitcode}" + (f": {last}" if last else "")
    where = f"its output: {log}" if log else f"its output: under {logs}"
    what = redact(f"rank {rank} (pid {failure.pid}) {how}; the other ranks were stopped; {where}")
    record = {"rank": rank, "pid": failure.pid, "exitcode": failure.exitcode,
              "signal": signal.Signals(-failure.exitcode).name if failure.exitcode < 0 else None,
              "log": str(log) if log else None}
    return what, record


def _rank_log(logs: Path, run_id: str, local_rank: int) -> Path | None:
    """A rank's stderr file of this launch (torchrun names the folder <run id>_<random>)."""
    found = sorted(logs.glob(f"{run_id}_*/attempt_*/{local_rank}/stderr.log"))
    return found[-1] if found else None


def _last_line(path: Path) -> str:
    """The last non-empty line a rank wrote to stderr (its own one-line error), at most 300 characters."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def record_failure(run_dir: Path, what: str, record: dict) -> None:
    """summary.json says the run failed because of that rank (rank 0 could only say it was stopped)."""
    from rlzoo.runs import atomic_write_json, read_summary

    summary = read_summary(run_dir)
    if summary is None:  # (the run died before rank 0 wrote one: nothing to correct)
        return
    atomic_write_json({**summary, "status": "failed", "error": what, "failed_rank": record},
                      Path(run_dir) / "summary.json")


def nproc_option(argv: list[str]) -> tuple[int | None, list[str]]:
    """(N of --nproc_per_node=N / --nproc_per_node N, the other arguments); N is None without it."""
    from rlzoo.config import ConfigError

    rest, nproc, i = [], None, 0
    while i < len(argv):
        item = argv[i]
        name, _, value = item.partition("=")
        if name in ("--nproc_per_node", "--nproc-per-node"):
            if not value:
                i += 1
                value = argv[i] if i < len(argv) else ""
            if not (value.isascii() and value.isdigit() and int(value) >= 1):
                raise ConfigError(f"--nproc_per_node={value!r} must be a number of ranks >= 1")
            nproc = int(value)
        else:
            rest.append(item)
        i += 1
    return nproc, rest
