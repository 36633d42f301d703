"""`rlzoo <command>`: the non-training entry points in one place.

    rlzoo report <multirun dir> [--threshold X] [--baseline key=value]   # ablation table + plots
    rlzoo evaluate run_dir=DIR [weights=ema|current] [eval.samples=N]    # evaluate a trained run
    rlzoo evaluate task=shapes                                           # evaluate a base model
    rlzoo export run_dir=DIR --out OUT [weights=ema|current]             # weights as safetensors
    rlzoo prompts prompts=geneval --out DIR                              # a prompt set's splits as files
    rlzoo bench [--steps 10 20 40]                                       # estimator benchmark
    rlzoo train ...                                                      # = rlzoo-train ...
"""
from __future__ import annotations

import sys

COMMANDS = {"report": "rlzoo.report", "bench": "rlzoo.commands.bench", "train": "rlzoo.commands.train",
            "evaluate": "rlzoo.commands.evaluate", "export": "rlzoo.commands.export",
            "prompts": "rlzoo.commands.prompts"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print((__doc__ or "").strip())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rlzoo: error: unknown command {command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    import importlib
    import os

    if os.getcwd() not in sys.path:  # a user's own components import from here, as under `python -m`
        sys.path.append(os.getcwd())
    importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    main()
