"""How every command fails: one line on stderr, an exit code that says what kind of failure it
was, and the traceback kept in a log file the line names (README, Reliability).

    2    bad input: a config value, a path, a damaged or foreign checkpoint, a run directory that
         another process owns, an output that would overwrite files rlzoo did not write
    1    a failure while running: a reward server that does not answer, a full disk, a
         non-finite loss, a bug
    130  interrupted by SIGINT (Ctrl-C)
    143  interrupted by SIGTERM (a scheduler's preemption, `kill`)

Bad input is the user's to fix and says how; its traceback would only hide that, so none is
kept. `RLZOO_TRACEBACK=1` prints the traceback of any failure as well.
"""
from __future__ import annotations

import functools
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1
EXIT_SIGNAL: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


class BadInput(ValueError):
    """Input that cannot run; the message is one line that names the value and what to do."""


class ConfigError(BadInput):
    """A configuration that cannot run."""


class CheckpointError(BadInput):
    """A checkpoint that cannot be read or does not fit the run; it is left in place."""


class RunLocked(BadInput):
    """Another live process owns the run directory."""


class OutputRefused(BadInput):
    """Writing there would replace files rlzoo did not write (or a run's own files)."""


class Interrupted(BaseException):
    """SIGTERM arrived (SIGINT arrives as KeyboardInterrupt); a BaseException like it, so no
    `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def signal_number(exc: BaseException) -> int | None:
    """The signal an interruption came from, or None for any other exception."""
    if isinstance(exc, Interrupted):
        return exc.signum
    return signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None


def raise_on_sigterm() -> None:
    """Turn SIGTERM into `Interrupted` in this process, so the run writes its summary and exits
    143; left alone where someone else (submitit, a launcher) already handles SIGTERM."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def handler(signum, frame):
            raise Interrupted(signum)
        signal.signal(signal.SIGTERM, handler)


# Credentials a URL may carry: user:password@ before its host, a token-like parameter in its query.
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s]*@")
_SECRET_PARAMETER = re.compile(r"([?&;][^=&#\s]*(?:token|key|secret|passw|pwd|auth|sig|credential)[^=&#\s]*=)[^&#\s'\"]*",
                               re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every credential a URL in it carries replaced by ***: what rlzoo prints, logs
    and records of a command line or an error (a run's files are often readable by others)."""
    return _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(r"\1***@", str(text)))


def one_line(exc: BaseException) -> str:
    """An exception as one line: an OS error names its path, anything else its type and message;
    credentials in a URL redacted."""
    if isinstance(exc, OSError) and exc.filename:
        what = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    elif isinstance(exc, BadInput):
        what = str(exc)
    else:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    what = redact(" ".join(what.split()))
    return what if len(what) <= 400 else what[:397] + "..."


def save_traceback(prog: str, exc: BaseException, log: Path | None = None) -> Path | None:
    """Write the traceback of `exc` to `log` (a run's error.txt), or to a new file in the
    temporary directory when there is none or it cannot be written; None if nothing could be."""
    text = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    candidates = [log] if log is not None else []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidates.append(Path(tempfile.gettempdir()) / f"rlzoo-{prog.replace(' ', '-')}-{stamp}-{os.getpid()}.log")
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def fail(prog: str, exc: BaseException, log: Path | None = None, what: str | None = None,
         saved: Path | None = None) -> SystemExit:
    """Print the one line for `exc` and return the SystemExit with its exit code (raise it). The
    traceback goes to `log` (else a temporary file) unless it was `saved` already."""
    number = signal_number(exc)
    what = redact(what) if what else one_line(exc)
    if number is not None:
        print(f"{prog}: {what}", file=sys.stderr, flush=True)
        return SystemExit(EXIT_SIGNAL.get(number, 128 + number))
    if isinstance(exc, BadInput):
        print(f"{prog}: error: {what}", file=sys.stderr, flush=True)
        return SystemExit(EXIT_BAD_INPUT)
    saved = saved or save_traceback(prog, exc, log)
    if os.environ.get("RLZOO_TRACEBACK"):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    where = f"traceback in {saved}" if saved else "the traceback could not be saved (RLZOO_TRACEBACK=1 prints it)"
    print(f"{prog}: error: {what} ({where})", file=sys.stderr, flush=True)
    return SystemExit(EXIT_FAILED)


def one_line_errors(prog: str):
    """Decorator for a command's `main`: any failure ends in one line and its exit code."""
    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            raise_on_sigterm()
            try:
                return main(*args, **kwargs)
            except SystemExit:
                raise
            except BaseException as exc:  # KeyboardInterrupt and Interrupted too: exit 130 / 143
                raise fail(prog, exc) from None
        return run
    return wrap
