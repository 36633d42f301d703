"""`rlzoo prompts`: write a prompt set (rlzoo.prompts) as train/test files with GenEval metadata.

    rlzoo prompts prompts=geneval --out prompts/geneval     # train.jsonl, test.jsonl, *.txt
    rlzoo prompts prompts=file prompts.path=drawbench.txt --out prompts/drawbench
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlzoo.errors import one_line_errors
from rlzoo.prompts import write


@one_line_errors("rlzoo prompts")
def main(argv: list[str] | None = None) -> None:
    from rlzoo.config import ConfigError, build, compose_config

    argv = list(sys.argv[1:] if argv is None else argv)
    out = argv[argv.index("--out") + 1] if "--out" in argv and argv.index("--out") + 1 < len(argv) else None
    rest = [a for i, a in enumerate(argv) if a != "--out" and not (i and argv[i - 1] == "--out")]
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    unknown = [a for a in rest if a not in overrides and a != "--overwrite"]
    usage = "usage: rlzoo prompts prompts=geneval|file [prompts.<key>=...] --out DIR [--overwrite]"
    if out is None or not any(a.startswith("prompts=") for a in overrides) or unknown:
        raise ConfigError(usage + (f" (unknown option {', '.join(unknown)})" if unknown else ""))
    cfg = compose_config(overrides)
    try:
        prompt_set = build(cfg.prompts)
    except Exception as exc:  # hydra wraps the constructor's own message
        raise ConfigError(" ".join(str(exc.__cause__ or exc).split())) from None
    counts = write(prompt_set, Path(out).expanduser(), "--overwrite" in rest)
    print(f"written to {out}/: {counts['train']} train and {counts['test']} test prompts")


if __name__ == "__main__":
    main()
