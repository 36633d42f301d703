"""What several test files share: paths, the offline environment of a subprocess, a run of
`rlzoo-train` as a command, a trainer built in this process, a directory's fingerprint and a
JSONL log's records. (Fixtures live in conftest.py; these are plain functions.)"""
import contextlib
import hashlib
import io
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


def run_main(main, argv, capsys=None) -> subprocess.CompletedProcess:
    """A command's `main(argv)` in this process, as a new process would give it: exit code, stdout
    and stderr (read through pytest's `capsys` where a test has it, else by redirecting)."""
    argv = [str(a) for a in argv]
    if capsys is not None:
        capsys.readouterr()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if capsys is None:
            stack.enter_context(contextlib.redirect_stdout(out))
            stack.enter_context(contextlib.redirect_stderr(err))
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)  # (as the interpreter exits)
    if capsys is not None:
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def rlzoo_train_here(*argv: str) -> subprocess.CompletedProcess:
    """`rlzoo-train argv...` through its `main` in this process (no new interpreter's seconds of
    imports), as `rlzoo_train` gives it. For a run that needs no process of its own (a signal, a
    kill or a race does: rlzoo_train)."""
    from rlzoo.commands.train import main

    if str(HELPERS) not in sys.path:  # (importable, as ENV makes them for a subprocess)
        sys.path.insert(0, str(HELPERS))
    return run_main(main, argv)


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


def tiny(*overrides: str, task: str = "toy2d") -> list[str]:
    """The one tiny config the tests start from: debug=tiny on `task` (2 iterations of 8 samples in
    groups of 4, 3-step rollouts, a 12-sample evaluation, no periodic checkpoint), one thread, no
    bar, with `overrides` on top. (The `cfg_tiny` and `tiny_trainer` fixtures build on it.)"""
    return [f"task={task}", "debug=tiny", "threads=1", "progress_bar=false", *overrides]


TINY = tiny()


# ------------------------------------------------------------------ the fault suite's tools (tests/faults/)


def kept(before: dict, after: dict, allow: tuple = ()) -> bool:
    """Every file of `before` is still there with the same bytes (except the `allow`ed names)."""
    return all(after.get(k) == v for k, v in before.items() if k not in allow)


def train(run_dir, *overrides, wait=True, **kwargs):
    """A tiny toy2d run of `rlzoo-train` in a new process."""
    return rlzoo_train(*TINY, f"run_dir={run_dir}", *overrides, wait=wait, **kwargs)


def train_here(capsys, *argv) -> subprocess.CompletedProcess:
    """`rlzoo-train argv...` in this process (from the current directory), read through capsys."""
    from rlzoo.commands.train import main

    return run_main(main, argv, capsys)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def cli(capsys, *argv) -> tuple[int, str]:
    """`rlzoo <argv>` in this process: (exit code, its one stderr line or '')."""
    from rlzoo.commands.cli import main

    out = run_main(main, argv, capsys)
    return out.returncode, (one_line(out.stderr) if out.returncode else out.stderr)


@contextlib.contextmanager
def hold_lock(run_dir: Path, name: str = ".rlzoo.lock"):
    """Another process that holds `run_dir`'s lock for the body of the `with`, as a training run
    does (flock on the directory, its pid in `name`), without importing torch; killed after."""
    code = ("import fcntl, json, os, sys, time\n"
            "os.makedirs(sys.argv[1], exist_ok=True)\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "open(os.path.join(sys.argv[1], sys.argv[2]), 'w').write(json.dumps({'pid': os.getpid(),\n"
            "    'host': 'here', 'started': 'now', 'command': 'rlzoo-train (test holder)'}))\n"
            "print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir), name], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def wait_for_iterations(run_dir, iterations: int, timeout: float = 120) -> None:
    """Until a running run's metrics.jsonl holds `iterations` lines (or `timeout` seconds pass)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = Path(run_dir) / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= iterations:
            return
        time.sleep(0.05)


def kill_a_rank_when(run_dir, iterations: int, process):
    """SIGKILL one of torchrun's workers once the run has logged `iterations` iterations."""
    import signal

    wait_for_iterations(run_dir, iterations)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)


# ------------------------------------------------------------------ task=t2i on the tiny SD3
SD3_TINY = {"_target_": "rlzoo.tasks.t2i.model.SD3Tiny", "seed": 0}
PICKSCORE = {"_target_": "rlzoo.rewards.images.CLIPReward", "tiny": True, "scale": 1 / 26}


def tiny_task(tmp_path, **kwargs):
    """task=t2i on a tiny GenEval prompt set, evaluated by the tiny PickScore."""
    from rlzoo.config import build
    from rlzoo.prompts import GenEvalPrompts
    from rlzoo.tasks.t2i import T2ITask

    return T2ITask(prompts=GenEvalPrompts(per_family=4, test_fraction=0.5), eval_rewards={"reward": build(PICKSCORE)},
                   embedding_cache=str(tmp_path / "embeddings"), **kwargs)


def lora_cfg(rank=4, alpha=8):
    """The tiny SD3's model config with LoRA on the shipped targets."""
    from omegaconf import OmegaConf

    return OmegaConf.create({**SD3_TINY, "lora": {"rank": rank, "alpha": alpha, "init": "gaussian",
                                              "target_modules": lora_targets()}})


def randomize(policy, view, scale=0.3, seed=0):
    """Give one adapter weights large enough that a wrong load or a wrong view would show."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.adapter_params[view].values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def t2i_batch(task, n=4, seed=0):
    """n rows of the task's training prompts at random (x, sigma)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) % len(task.train_prompts())
    cond = task.conditioning([task.train_prompts()[i] for i in ids.tolist()], ids, ids)
    x = torch.randn((n, *task.sample_shape), generator=g)
    sigma = torch.rand(n, generator=g) * 0.9 + 0.05
    return x, sigma, cond


def velocity_and_grads(tmp_path, **settings):
    """The tiny SD3 with LoRA (`settings` on top: precision, gradient checkpointing, compile): its
    guided velocity on a fixed batch, and the gradients of that velocity's mean square."""
    from omegaconf import OmegaConf

    from rlzoo.policies import make_policy

    task = tiny_task(tmp_path)
    cfg = OmegaConf.merge(lora_cfg(), settings)
    policy = make_policy(task.load_base_model(cfg), cfg)
    randomize(policy, "current", seed=7)
    x, sigma, cond = t2i_batch(task)
    v = policy.velocity(x, sigma, task.guided(cond, 2.0), "current")
    v.square().mean().backward()
    return policy, v.detach(), [p.grad.clone() for p in policy.parameters()]


# ------------------------------------------------------------------ stubs and set-ups several folders share
def user_dir(tmp_path: Path, *names: str) -> Path:
    """A folder of the user's own files, which no command may delete or replace."""
    d = tmp_path / "mine"
    d.mkdir()
    for name in names:
        (d / name).write_text(f"the user's own {name}\n")
    return d


def counting_handler(status: int, body: bytes, calls: list, first: bytes | None = None):
    """Answers `status` and `body` to every request (`first`, if given, with 200 to the first one:
    the test request a run sends before any model), counting them in `calls`."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            calls.append(1)
            if first is not None and len(calls) == 1:
                self.send_response(200)
                self.send_header("Content-Length", str(len(first)))
                self.end_headers()
                self.wfile.write(first)
                return
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def stream(seed: int):
    """A stream of the run's random numbers (rlzoo.rng) from its own seed."""
    import torch

    from rlzoo.rng import StreamDraws

    return StreamDraws(torch.Generator().manual_seed(seed))


def toy_setup(steps_per_update=1, seed=0):
    """Paper B on toy2d: the task, a critic attached to the base policy, R_dm (8 terms) reading it,
    256 rows of conditioning, the teacher's samples by seed, and each consumer's draws."""
    import torch
    from omegaconf import OmegaConf

    from rlzoo.config import CONF_DIR, build, compose_config
    from rlzoo.policies import make_policy
    from rlzoo.samplers import EulerSampler

    cfg = compose_config(["task=toy2d", f"critic.steps_per_update={steps_per_update}", "critic.lr=1e-3"])
    task = build(cfg.task)
    policy = make_policy(task.load_base_model(cfg.model), cfg.model)
    critic = build(cfg.critic)
    critic.attach(policy)
    reward = build(OmegaConf.merge(OmegaConf.load(CONF_DIR / "reward" / "dm.yaml"), {"terms": 8}))
    reward.use_critic(critic)
    ids = torch.arange(256) % len(task.train_prompts())
    cond = task.conditioning([task.train_prompts()[i] for i in ids.tolist()], ids, ids)

    def teacher_samples(seed):
        noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(seed))
        return EulerSampler(20).sample(policy.velocity_fn("reference"), noise, cond).x0

    draws = {"critic": stream(0), "reward": stream(seed)}  # (each its own stream, as in a run)
    return task, critic, reward, cond, teacher_samples, draws
