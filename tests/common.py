"""What several test files share: paths, the offline environment of a subprocess, a run of
`rlzoo-train` as a command, a trainer built in this process, a directory's fingerprint and a
JSONL log's records. (Fixtures live in conftest.py; these are plain functions.)"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HELPERS = REPO / "tests" / "helpers"
# A subprocess's environment: offline, one thread, the test helpers importable.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
       "PYTHONPATH": os.pathsep.join([str(HELPERS), *filter(None, [os.environ.get("PYTHONPATH")])])}


def lora_targets() -> list[str]:
    """The shipped LoRA target list (conf/shared/lora.yaml), the one place it is written."""
    from omegaconf import OmegaConf

    return list(OmegaConf.load(REPO / "conf" / "shared" / "lora.yaml").target_modules)


def rlzoo_train(*argv: str, wait: bool = True, **kwargs):
    """`rlzoo-train argv...` in a new process, from the repository, offline: the finished
    CompletedProcess, or (wait=False) the running Popen."""
    command = [str(BIN / "rlzoo-train"), *argv]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=ENV,
                          **{"timeout": 300, **kwargs})


def trainer(run_dir, *overrides):
    """A Trainer on the config `overrides` compose to (validated), writing to `run_dir`."""
    from rlzoo.config import build_components, compose_config, validate
    from rlzoo.trainer import Trainer

    cfg = compose_config(list(overrides))
    validate(cfg)
    return Trainer(cfg, run_dir, build_components(cfg))


def snapshot(directory: Path) -> dict:
    """{relative path: sha256} of every file under `directory`: equal snapshots, nothing changed."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def records(path) -> list[dict]:
    """The records of a JSONL log."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
