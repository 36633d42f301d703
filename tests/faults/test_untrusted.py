"""The fault suite, continued (README, Reliability): files rlzoo reads but did not write are
untrusted. A crafted run directory (a YAML alias bomb, a FIFO, a link to a device, a huge or deeply
nested file) and a crafted prompt file each end in one line naming the file, quickly, with
nothing written; a prompt set is written whole or recognised as incomplete."""
import contextlib
import json
import os
import signal
import subprocess

import pytest
from common import BIN, ENV, cli, one_line, snapshot

# a few hundred bytes that expand to 9^8 (43 million) strings when aliases are followed
ALIAS_BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
                     for p, a in zip(" abcdefg", "abcdefgh"))


@contextlib.contextmanager
def within(seconds: int):
    """Fail (instead of hanging the suite) when the body takes longer than `seconds`."""
    def expired(signum, frame):
        raise TimeoutError(f"still reading after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def plant(path, kind: str, huge: int = 5 * 2**20) -> None:
    """Replace `path` by a crafted file of `kind` (`huge`: a sparse file of that many bytes)."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(huge)  # sparse: zeros that cost no disk
    elif kind == "bomb":
        path.write_text(ALIAS_BOMB)
    elif kind == "deep":
        path.write_text("a: " + "[" * 200 + "]" * 200 + "\n")
    elif kind == "long line":
        path.write_text('{"iteration": 1, "x": "' + "y" * (2 * 2**20) + '"}\n')
    else:
        raise ValueError(kind)


# ------------------------------------------------------------------ a run directory cannot hang its reader
@pytest.mark.parametrize("kind, message", [
    ("bomb", "uses a YAML anchor or alias"), ("fifo", "is a FIFO"), ("device", "is a device"),
    ("huge", "more than the 4.0 MiB"), ("deep", "nests deeper than 64 levels")])
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_crafted_config_yaml_is_one_line_naming_it(capsys, run, tmp_path, kind, message, command):
    plant(run / "config.yaml", kind)
    before = snapshot(run) if kind != "fifo" and kind != "device" else None
    argv = [command, f"run_dir={run}"] + (["--out", str(tmp_path / "out")] if command == "export" else [])
    with within(20):
        code, err = cli(capsys, *argv)
    assert code == 2 and f"{run / 'config.yaml'}" in err and message in err, err
    if before is not None:
        assert snapshot(run) == before
    assert not (tmp_path / "out").exists()


def test_the_alias_bomb_stops_a_fresh_process_in_seconds(run):
    """As a user meets it: a new process, which must end by itself with one line."""
    assert len(ALIAS_BOMB) < 400
    plant(run / "config.yaml", "bomb")
    result = subprocess.run([str(BIN / "rlzoo"), "evaluate", f"run_dir={run}"], capture_output=True, text=True,
                            env=ENV, timeout=60)
    assert result.returncode == 2 and "uses a YAML anchor or alias (line 1)" in one_line(result.stderr)


@pytest.mark.parametrize("name, kind, message", [
    ("config.yaml", "bomb", "uses a YAML anchor or alias"),
    (".hydra/overrides.yaml", "bomb", "uses a YAML anchor or alias"),
    (".hydra/hydra.yaml", "fifo", "is a FIFO"),
    ("eval.jsonl", "fifo", "is a FIFO"),
    ("eval.jsonl", "device", "is a device"),
    ("metrics.jsonl", "long line", "is a line of more than 1.0 MiB"),
])
def test_a_crafted_file_in_a_sweep_is_one_line_of_the_report(capsys, trained, tmp_path, name, kind, message):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(trained, sweep / "seed=0")
    (sweep / "seed=0" / ".hydra").mkdir(exist_ok=True)
    (sweep / "seed=0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    plant(sweep / "seed=0" / name, kind)
    with within(20):
        code, err = cli(capsys, "report", str(sweep))
    assert code == 2 and name.split("/")[-1] in err and message in err, err
    assert not (sweep / "report").exists()


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "deep"])
def test_a_crafted_summary_or_lock_reads_as_none(run, kind):
    """summary.json and the lock's holder only inform: unreadable, they count as absent."""
    from rlzoo.runs import read_summary
    from rlzoo.runs.lock import read_holder

    for name in ("summary.json", ".rlzoo.lock"):
        plant(run / name, kind)
    with within(20):
        assert read_summary(run) is None and read_holder(run) == {}


def test_a_checkpoint_that_is_a_fifo_is_one_line(capsys, run):
    plant(run / "checkpoints" / "last.pt", "fifo")
    with within(20):
        code, err = cli(capsys, "evaluate", f"run_dir={run}")
    assert code == 2 and "last.pt (a checkpoint) is a FIFO" in err


@pytest.mark.parametrize("kind, message", [("bomb", "config.yaml .*uses a YAML anchor or alias"),
                                           ("fifo", "is not a run directory")])  # (a FIFO is no file)
def test_a_crafted_parent_of_init_from_is_one_line(trained, tmp_path, kind, message):
    import shutil

    from rlzoo.config import ConfigError, compose_config, validate

    parent = tmp_path / "parent"
    shutil.copytree(trained, parent)
    plant(parent / "config.yaml", kind)
    with within(20), pytest.raises(ConfigError, match=f"init_from=.*{message}"):
        validate(compose_config(["task=toy2d", f"run_dir={tmp_path / 'new'}", f"init_from={parent}"]))


@pytest.mark.parametrize("text, message", [("[" * 100 + "]" * 100, "nests deeper than 64 levels"),
                                           ('{"model": {"_target_": ', "is not JSON")])
def test_a_crafted_export_config_json_is_one_line(tmp_path, text, message):
    from rlzoo.commands.export import load_model
    from rlzoo.config import ConfigError

    (tmp_path / "config.json").write_text(text)
    with within(20), pytest.raises(ConfigError, match=message):
        load_model(tmp_path)


def test_rlzoo_never_writes_what_its_bounded_reader_refuses(run):
    """The bounds refuse crafted files only: every file a run writes reads back."""
    from rlzoo.runs.files import parse_jsonl
    from rlzoo.runs.reading import load_config, load_json

    assert load_config(run / "config.yaml").task.name == "toy2d"
    assert load_json(run / "summary.json", "a summary")["status"] == "completed"
    assert parse_jsonl(run / "metrics.jsonl")[0] and not parse_jsonl(run / "metrics.jsonl")[1]


# ------------------------------------------------------------------------------- prompt files and sets
def prompts(capsys, tmp_path, lines, out="out", *more):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return cli(capsys, "prompts", "prompts=file", f"prompts.path={path}", "--out", str(tmp_path / out), *more)


@pytest.mark.parametrize("record, message", [
    ({"prompt": 3}, "p.jsonl:2: 'prompt' must be a string, got int"),
    ({"prompt": ["a", "b"]}, "p.jsonl:2: 'prompt' must be a string, got list"),
    ({"prompt": "two\nlines"}, "p.jsonl:2: 'prompt' holds a line break"),
    ({"prompt": "a", "tag": 7}, "p.jsonl:2: 'tag' must be a string"),
    ({"text": "a"}, "p.jsonl:2 is not a JSON object with a 'prompt' key"),
])
def test_a_bad_record_is_one_line_and_an_existing_set_stays_whole(capsys, tmp_path, record, message):
    assert prompts(capsys, tmp_path, [{"prompt": "a cat"}, {"prompt": "a dog"}])[0] == 0
    before = snapshot(tmp_path / "out")
    code, err = prompts(capsys, tmp_path, [{"prompt": "a bird"}, record])
    assert code == 2 and message in err
    assert snapshot(tmp_path / "out") == before


@pytest.mark.parametrize("kind, message", [("fifo", "is a FIFO"), ("device", "is a device"),
                                           ("huge", "more than the 1024.0 MiB")])
def test_an_endless_or_blocking_prompt_file_is_one_line(capsys, tmp_path, kind, message):
    plant(tmp_path / "p.txt", kind, huge=2**31)
    with within(20):
        code, err = cli(capsys, "prompts", "prompts=file", f"prompts.path={tmp_path / 'p.txt'}",
                        "--out", str(tmp_path / "out"))
    assert code == 2 and "p.txt (a prompt file)" in err and message in err
    assert not (tmp_path / "out").exists()


def test_a_prompt_of_more_than_64_kib_is_one_line(capsys, tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n" + "word " * 20000 + "\n")
    code, err = cli(capsys, "prompts", "prompts=file", f"prompts.path={tmp_path / 'p.txt'}", "--out",
                    str(tmp_path / "out"))
    assert code == 2 and "p.txt:2 (a prompt file) is a line of more than 64.0 KiB" in err


def test_empty_repeated_and_over_long_prompts_are_one_warning_line_each(capsys, tmp_path):
    long = " ".join(["word"] * 90)
    code, err = prompts(capsys, tmp_path, [{"prompt": "a cat"}, {"prompt": ""}, {"prompt": "a cat"},
                                           {"prompt": long}, {"prompt": ""}, {"prompt": long}])
    warnings = err.strip().splitlines()
    assert code == 0 and len(warnings) == 3, err
    assert "2 empty prompt(s) (line 2, 5)" in warnings[0]
    assert "3 repeated prompt(s) (line 3 repeats line 1)" in warnings[1]
    assert "2 prompt(s) longer than SD3's text encoders read (line 4: at least 90 CLIP tokens)" in warnings[2]
    assert "CLIP keeps the first 77 tokens and T5 the first 256" in warnings[2]


def test_a_killed_prompts_command_leaves_a_set_its_rerun_completes(capsys, tmp_path, monkeypatch):
    """Killed after the first of four files: the set is marked incomplete (a reader refuses it),
    and the same command run again completes it without --overwrite."""
    import rlzoo.runs.outputs as outputs
    from rlzoo.prompts import FilePrompts

    assert prompts(capsys, tmp_path, [{"prompt": "a cat"}])[0] == 0  # an earlier set in the folder
    real, written = outputs.atomic_write_bytes, []

    def dies_after_one_file(path, data):
        if path.name != outputs.MANIFEST:
            if written:
                raise KeyboardInterrupt
            written.append(path.name)
        real(path, data)
    monkeypatch.setattr(outputs, "atomic_write_bytes", dies_after_one_file)
    code, _ = prompts(capsys, tmp_path, [{"prompt": "a dog"}, {"prompt": "a bird"}])
    assert code == 130 and written == ["train.jsonl"]
    with pytest.raises(ValueError, match="rlzoo prompts` was stopped while writing"):
        FilePrompts(str(tmp_path / "out" / "train.jsonl"))
    monkeypatch.setattr(outputs, "atomic_write_bytes", real)
    assert prompts(capsys, tmp_path, [{"prompt": "a dog"}, {"prompt": "a bird"}])[0] == 0
    assert [p.text for p in FilePrompts(str(tmp_path / "out" / "test.jsonl")).test()] == ["a dog", "a bird"]
    assert "pending" not in json.loads((tmp_path / "out" / outputs.MANIFEST).read_text())
