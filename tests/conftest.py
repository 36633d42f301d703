import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def cfg_tiny(tmp_path):
    """The tiny toy2d config (common.tiny) composed and validated, its run directory under
    tmp_path (lightning-hydra-template's `cfg_train`)."""
    from common import tiny

    from rlzoo.config import compose_config, validate

    cfg = compose_config([*tiny(), f"run_dir={tmp_path / 'run'}"])
    validate(cfg)
    return cfg


@pytest.fixture
def tiny_trainer(tmp_path):
    """A Trainer on common.tiny(*overrides, task=...) (validated), writing to `run_dir`
    (default tmp_path/run)."""
    from common import tiny, trainer

    def make(*overrides, task="toy2d", run_dir=None):
        run_dir = run_dir or tmp_path / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        return trainer(run_dir, *tiny(*overrides, task=task))
    return make


@pytest.fixture(scope="module")
def t2i_lora(tmp_path_factory):
    """(task, policy, model config): task=t2i on the tiny SD3 with LoRA adapters, built once per module."""
    from common import lora_cfg, tiny_task

    from rlzoo.policies import make_policy

    tmp = tmp_path_factory.mktemp("t2i")
    task = tiny_task(tmp)
    cfg = lora_cfg()
    policy = make_policy(task.load_base_model(cfg), cfg)
    return task, policy, cfg


@pytest.fixture
def run_dir(tmp_path):
    """A run directory holding a run (a checkpoint, logs, a summary) that a refused command must
    leave exactly as it was."""
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "metrics.jsonl").write_text('{"iteration": 1, "reward/reward": 0.5}\n')
    (d / "summary.json").write_text('{"status": "running"}\n')
    (d / "checkpoints" / "last.pt").write_bytes(b"precious")
    return d


@pytest.fixture(scope="module")
def verifier():
    """shapes' rule-based verifier at the task's 24-pixel size."""
    from rlzoo.tasks.shapes.verifier import Verifier

    return Verifier(24)


@pytest.fixture
def server():
    """Start a reward server on 127.0.0.1 (a free port) with the given stdlib handler class, or
    rlzoo's reference server with the given scorer; its URL. Stopped afterwards."""
    import threading
    from http.server import ThreadingHTTPServer

    from rlzoo.rewards.server import serve

    started = []

    def start(scorer=None, handler=None) -> str:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler) if handler else serve(scorer, port=0)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ the fault suite's fixtures (tests/faults/)
@pytest.fixture
def here(capsys, monkeypatch):
    """`rlzoo-train` in this process, as `common.train` runs it in another (Hydra runs again
    in-process, in about a second where a new process takes three)."""
    import subprocess

    from common import HELPERS, TINY

    from rlzoo.commands.train import main

    monkeypatch.syspath_prepend(str(HELPERS))

    def run(run_dir, *overrides):
        capsys.readouterr()
        try:
            main([*TINY, f"run_dir={run_dir}", *overrides])
            code = 0
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess([], code, out.out, out.err)
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished toy2d run (3 iterations), trained once for the module; tests copy it."""
    from common import tiny, trainer

    run = tmp_path_factory.mktemp("trained") / "run"
    trainer(run, *tiny("train.iterations=3", f"run_dir={run}")).fit()
    return run


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the finished toy2d run, the test's to change."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy
