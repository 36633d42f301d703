"""The entry points: `rlzoo-train` (train, with sweeps and ranks), `rlzoo <command>` (cli: evaluate,
export, prompts, report, bench), `rlzoo-pretrain`. Each is a `main(argv)` that parses, validates and
calls the library; nothing below rlzoo.commands imports from here."""
