"""README's shell commands, run as written: each bash code block in a fresh clone of the
repository, its commands in order, from the clone's root, with the project's environment (.venv).

A command's trailing comment tag says how (README, Set-up):
- none: as written; it must succeed;
- `[long]`: with `debug=tiny` added (`ARGS=debug=tiny` for a make target), keeping the run
  directory (a sweep's folder) the command would have used, so later commands of the block find it;
- `[dry run]`: only composed — `make -n` for a make target, `--cfg job` for rlzoo-train;
- `[needs …]` (a GPU, weights, the network, a cluster): rlzoo-train and rlzoo commands must
  refuse in one line here (exit 2, one stderr line) for a reason the tag states (a command broken
  otherwise fails); with `device=cpu` instead of a GPU, for one of its other reasons; other
  programs are not run.
Every command runs from the environment: `.venv/bin/<program>` or `make`.
README code blocks whose first line is `# <relative path>` are files an example needs; they are
written into the clone first.
"""
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from common import ENV, REPO, run_main

README = (REPO / "README.md").read_text()
TAGS = ("[long]", "[dry run]", "[needs")


def code_blocks(language: str) -> list[tuple[int, str]]:
    """(line number, text) of every README code block in `language`."""
    return [(README[:m.start()].count("\n") + 1, m.group(2))
            for m in re.finditer(r"```([a-z]*)\n(.*?)```", README, flags=re.S) if m.group(1) == language]


def commands(block: str) -> list[tuple[str, str]]:
    """(command, trailing comment) of each shell line; continuation lines joined."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        command, _, comment = line.partition(" # ")
        out.append((" ".join(command.split()), comment.strip()))
    return out


def example_files() -> dict[str, str]:
    """README's example files: code blocks whose first line is `# <relative path>`."""
    files = {}
    for language in ("python", "yaml"):
        for _, block in code_blocks(language):
            first = block.splitlines()[0]
            match = re.fullmatch(r"# ([\w./-]+\.(py|yaml))", first)
            if match:
                files[match.group(1)] = block
    return files


BLOCKS = [(line, cmds) for line, block in code_blocks("bash") if (cmds := commands(block))]


def test_every_command_runs_from_the_environment():
    """One convention (README, Set-up): `.venv/bin/<program>` or a make target, nothing bare."""
    bare = [c for _, cmds in BLOCKS for c, _ in cmds
            if not all(part.startswith((".venv/bin/", "make ")) for part in c.split(" && "))]
    assert not bare, bare


def default_run_dir(overrides: list[str]) -> str | None:
    """The run directory a single run with these overrides writes (None for a sweep): the
    config's run_dir, with the name rlzoo-train gives what the command changes (its variant)."""
    from rlzoo.config import compose_config, run_variant

    if "-m" in overrides:
        return None
    overrides = [o for o in overrides if "=" in o]
    variant = run_variant(overrides)
    return str(compose_config([*overrides, *([f"variant='{variant}'"] if variant else [])]).run_dir)


def default_sweep_dir(overrides: list[str]) -> str:
    """The folder a sweep with these overrides writes (as rlzoo-train names an ad-hoc one)."""
    from rlzoo.commands.sweeps import adhoc_sweep_name, sweep_dir
    from rlzoo.config import compose_config, parse_overrides

    overrides = [o for o in overrides if "=" in o]
    fixed = [o.input_line for o in parse_overrides(overrides) if not o.is_sweep_override()]
    if compose_config(fixed).sweep_name is None:
        return f"multirun/{adhoc_sweep_name(overrides)}"
    return str(sweep_dir(overrides))


# What a refusal for each reason a `[needs …]` tag may state says (one of these words).
REASONS = {"GPU": ("GPU",), "weights": ("does not exist", "weights"), "cluster": ("SLURM", "sbatch"),
           "token": ("token_env",)}


def reasons(comment: str) -> list[str]:
    """The reasons a `[needs …]` tag states that rlzoo can tell (GPU, weights, cluster, token)."""
    stated = comment.partition("[needs")[2].partition("]")[0]
    return [reason for reason in REASONS if reason.lower() in stated.lower()]


def assert_refused(out, command: str, stated: list[str]) -> None:
    errors = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(errors) == 1 and "error:" in errors[0], (command, out.stderr[-2000:])
    assert any(word in errors[0] for reason in stated for word in REASONS[reason]), (
        f"{command}: refused, but not for the reason its tag states ({', '.join(stated)}): {errors[0]}")


def how(command: str, comment: str) -> tuple[str, list[str]]:
    """(what the test does, the argv or shell line to run)."""
    tag = next((t for t in TAGS if t in comment), None)
    argv = shlex.split(command)
    rlzoo = argv[0] in (".venv/bin/rlzoo-train", ".venv/bin/rlzoo") or argv[:3] == [".venv/bin/python", "-m",
                                                                                    "rlzoo.commands.train"]
    if tag == "[needs":
        return ("refused", argv) if rlzoo else ("not run", argv)
    if tag == "[dry run]":
        if argv[0] == "make":
            return "run", ["bash", "-c", " && ".join(f"make -n {p.strip().removeprefix('make ')}"
                                                     for p in command.split(" && "))]
        return "run", [*argv, "--cfg", "job"]
    if tag == "[long]":
        if argv[0] == "make":
            parts = [p.strip() for p in command.split(" && ")]
            parts = [f"{p} ARGS='debug=tiny run_dir=runs/shapes/epg-elbo-dpm2/seed0'" if p == "make run"
                     else f"{p} ARGS='debug=tiny hydra.sweep.dir=multirun/{p.split('NAME=')[1].split()[0]}'"
                     if p.startswith("make sweep") else p for p in parts]
            return "run", ["bash", "-c", " && ".join(parts)]
        trains = argv[0] == ".venv/bin/rlzoo-train" or argv[:3] == [".venv/bin/python", "-m", "rlzoo.commands.train"]
        overrides = argv[1:] if argv[0] != ".venv/bin/python" else argv[3:]
        if trains and "-m" in overrides:  # (a sweep's folder, as the command would name it)
            return "run", [*argv, "debug=tiny", f"hydra.sweep.dir='{default_sweep_dir(overrides)}'"]
        run_dir = default_run_dir(overrides) if trains else None
        return "run", [*argv, "debug=tiny", *([f"run_dir={run_dir}"] if run_dir else [])]
    return "run", (["bash", "-c", command] if " && " in command else argv)


def fresh_clone(tmp_path: Path) -> Path:
    """A clone of the repository, with the project's environment and README's example files."""
    clone = tmp_path / "clone"
    if (REPO / ".git").exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    else:  # (a source tree without git: its files, without what runs and builds leave)
        shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".venv", "runs", "multirun", "exported", "*.egg-info",
                                                                   "__pycache__", ".pytest_cache"))
    (clone / ".venv").symlink_to(REPO / ".venv")
    os.utime(clone / "pyproject.toml", (0, 0))  # (older than .venv: make does not rebuild the environment)
    for name, text in example_files().items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(text)
    return clone


# (a block of commands for other machines only — downloads, gunicorn on GPUs — has nothing to run here)
RUNNABLE = [(line, cmds) for line, cmds in BLOCKS if any(how(c, t)[0] != "not run" for c, t in cmds)]


def entry_point(argv: list[str]):
    """The `main` that `.venv/bin/rlzoo-train` or `.venv/bin/rlzoo` calls, or None for any other program."""
    if argv[0] == ".venv/bin/rlzoo-train":
        from rlzoo.commands.train import main
        return main
    if argv[0] == ".venv/bin/rlzoo":
        from rlzoo.commands.cli import main
        return main
    return None


@pytest.mark.parametrize("line,cmds", RUNNABLE, ids=[f"README:{line}" for line, _ in RUNNABLE])
def test_readme_commands_run_as_written(tmp_path, monkeypatch, capsys, line, cmds):
    """Each block in a fresh clone, its commands in order. An `rlzoo-train` or `rlzoo` command runs
    its entry point's `main` with the command's arguments in this process (what the installed
    script does, without a new interpreter's seconds of imports; test_install runs the scripts
    themselves); `python -m rlzoo.commands.train`, make and everything else run as new processes."""
    clone = fresh_clone(tmp_path)
    monkeypatch.chdir(clone)
    env = {**ENV, "OMP_NUM_THREADS": "1"}

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        main = entry_point(argv)
        if main is None:
            return subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        return run_main(main, argv[1:], capsys)

    for command, comment in cmds:
        what, argv = how(command, comment)
        if what == "not run":
            continue
        out = run(argv)
        if what == "refused":
            stated = reasons(comment)
            assert stated, f"{command}: its tag ({comment}) states no reason rlzoo can tell ({', '.join(REASONS)})"
            assert_refused(out, command, stated)
            if "GPU" in stated and "device=cuda" in argv and len(stated) > 1:  # (refused for what else it needs)
                cpu = run([a.replace("device=cuda", "device=cpu") for a in argv])
                assert_refused(cpu, command + " (with device=cpu)", [r for r in stated if r != "GPU"])
        else:
            assert out.returncode == 0, (command, argv, out.stdout[-1500:], out.stderr[-2500:])
