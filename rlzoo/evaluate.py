"""Held-out evaluation with the fixed protocol (EvalProtocol): during training (the trainer) and
after it (`rlzoo evaluate`, rlzoo.commands.evaluate); a run's weights opened from its directory."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlzoo.distributed import SINGLE, Dist
from rlzoo.rewards import score
from rlzoo.samplers import EulerSampler, Sampler

# `weights=` names -> policy views; a run's checkpoint holds "ema" and "current", a base model "base"
WEIGHTS = {"ema": "ema", "current": "current", "base": "reference"}


def eval_weights(cfg) -> str:
    """The weights a run's evaluations measure: its EMA (Paper A) or its current weights."""
    return "ema" if cfg.eval.ema else "current"


def eval_sampler(cfg) -> EulerSampler:
    """The evaluation protocol's sampler: Euler ODE, eval.num_steps, the rollout sampler's shift (or
    its model family's schedule rule)."""
    schedule = cfg.sampler.get("schedule")
    return EulerSampler(cfg.eval.num_steps, cfg.eval.get("shift", cfg.sampler.get("shift", 1.0)),
                        schedule=None if schedule is None else dict(schedule))


@dataclass(frozen=True)
class EvalProtocol:
    """How held-out numbers are measured (`eval.*`): `samples` samples of the held-out prompts from
    fixed noise (`seed`), `batch_size` at a time, by `sampler` with guidance `cfg_scale`; with
    `teacher_steps`, the teacher's samples of the same noise too (Paper B's FID vs teacher)."""
    sampler: Sampler
    samples: int
    seed: int
    batch_size: int
    cfg_scale: float = 1.0
    teacher_steps: int | None = None

    @classmethod
    def from_config(cls, cfg) -> "EvalProtocol":
        e = cfg.eval
        return cls(eval_sampler(cfg), int(e.samples), int(e.seed), int(e.batch_size), float(e.get("cfg_scale", 1.0)),
                   e.get("teacher_steps"))


def protocol_record(cfg, task) -> dict:
    """What summary.json says about how its numbers were measured."""
    headline = (f"the training reward (reward={cfg.reward.get('name', cfg.reward.get('_target_'))})"
                if task.headline_reward is not None else "the task's own" if task.has_verifier else "task.eval_rewards.reward")
    return {"reward": headline, "split": "heldout", "sampler": "euler", "num_steps": int(cfg.eval.num_steps),
            "samples": int(cfg.eval.samples), "weights": eval_weights(cfg),
            "cfg_scale": float(cfg.eval.get("cfg_scale", 1.0)), "teacher_steps": cfg.eval.get("teacher_steps"),
            "num_prompts": len(task.heldout_prompts()), "seed": int(cfg.eval.seed)}


@torch.no_grad()
def evaluate(task, policy, view: str, protocol: EvalProtocol, device: torch.device,
             teacher_cache: dict | None = None, dist: Dist = SINGLE):
    """Held-out evaluation of the policy's `view` with fixed noise: (metrics, (x0, conditioning)
    of 64 samples spread over the whole evaluation set for a grid). `protocol.cfg_scale` > 1
    samples with classifier-free guidance. With `protocol.teacher_steps`, the teacher (the
    reference view) also samples the same noise with that many Euler steps, and the task's set
    metrics compare the samples with the teacher's too
    (Paper B's "FID vs teacher"); the teacher's own distances to the data come as `teacher_<metric>`.
    The teacher never changes within a run: pass a dict as `teacher_cache` and its samples and
    metrics are computed once per protocol.

    Under data parallelism (`dist`) the batches are shared out, batch b to rank b mod W: every rank
    draws every batch's noise from the one seeded generator (so batch b has the same noise whoever
    samples it), samples and scores its own batches, and every rank receives all of them, so the
    metrics are those of one process, on every rank."""
    sampler, seed, batch_size, cfg_scale, teacher_steps = (protocol.sampler, protocol.seed, protocol.batch_size,
                                                           protocol.cfg_scale, protocol.teacher_steps)
    prompts = task.heldout_prompts()
    generator = torch.Generator().manual_seed(seed)
    ids = task.eval_prompt_ids(protocol.samples)
    schedule = None if sampler.schedule is None else asdict(sampler.schedule)  # (a model family's rule, as the sampler's)
    teacher_sampler = EulerSampler(int(teacher_steps), sampler.shift, schedule=schedule) if teacher_steps else None
    key = (protocol.samples, seed, teacher_steps, sampler.shift, sampler.schedule, cfg_scale)
    cached = (teacher_cache or {}).get(key)
    if cached is not None:
        teacher_sampler = None
    mine = {}  # batch number -> (scores, samples, teacher samples), on the CPU
    for batch, start in enumerate(range(0, len(ids), batch_size)):
        chunk = ids[start:start + batch_size]
        noise = torch.randn((len(chunk), *task.sample_shape), generator=generator)
        if batch % dist.world != dist.rank:
            continue
        cond = task.conditioning([prompts[i] for i in chunk], prompt_ids=torch.tensor(chunk),
                                 group_ids=torch.tensor(chunk))
        cond = task.guided(cond, cfg_scale).to(device)
        noise = noise.to(device)
        rollout = sampler.sample(policy.velocity_fn(view), noise, cond)
        teacher = (teacher_sampler.sample(policy.velocity_fn("reference"), noise, cond).x0.cpu()
                   if teacher_sampler is not None else None)
        scores = task.score(rollout.x0, cond)
        for name, reward in task.extra_eval_rewards.items():  # task.eval_rewards beside a verifier
            scores[name] = score(reward, task, rollout.x0, cond)["reward"]
        if task.headline_reward is not None:  # the run's own training reward (rlzoo.config.build.use_headline)
            scores[HEADLINE] = score(task.headline_reward, task, rollout.x0, cond)["reward"]
        scores = {k: v.cpu() for k, v in scores.items()}
        mine[batch] = (scores, rollout.x0.cpu(), teacher)
    everyone = gather_batches(mine, dist)
    batches = [everyone[b] for b in sorted(everyone)]
    merged = {k: torch.cat([scores[k] for scores, _, _ in batches]) for k in batches[0][0]}
    samples = torch.cat([x0 for _, x0, _ in batches])
    shown = torch.linspace(0, len(ids) - 1, min(64, len(ids))).round().long()
    grid_cond = task.conditioning([prompts[ids[i]] for i in shown.tolist()],
                                  prompt_ids=torch.tensor(ids)[shown], group_ids=shown)
    if teacher_steps and cached is None:
        teacher = torch.cat([t for _, _, t in batches])
        cached = (teacher, {f"teacher_{k}": v for k, v in task.sample_metrics(teacher, torch.tensor(ids)).items()})
        if teacher_cache is not None:
            teacher_cache[key] = cached
    teacher, teacher_metrics = cached if cached is not None else (None, {})
    extra = {name: float(merged[name].float().mean()) for name in task.extra_eval_rewards}
    metrics = {**task.summarize({k: v for k, v in merged.items() if k != HEADLINE}, torch.tensor(ids)), **extra,
               **task.sample_metrics(samples, torch.tensor(ids), teacher), **teacher_metrics}
    if HEADLINE in merged:  # the training reward heads the record, the verifier's reward beside it
        metrics = {"reward": float(merged[HEADLINE].float().mean()), "verifier": metrics["reward"],
                   **{k: v for k, v in metrics.items() if k != "reward"}}
    return metrics, (samples[shown], grid_cond)


HEADLINE = "__training_reward"  # (the held-out scores of a run's own training reward, while they are merged)


def gather_batches(mine: dict, dist: Dist) -> dict:
    """Every rank's evaluated batches (batch number -> results), on every rank."""
    if not dist.active:
        return mine
    import torch.distributed

    every: list = [None] * dist.world
    torch.distributed.all_gather_object(every, mine)
    return {batch: results for part in every for batch, results in part.items()}


def open_run(run_dir: Path, overrides: Sequence[str] = ()):
    """(config with `overrides` applied, checkpoint path) of a trained run. The run's config.yaml
    is untrusted input (run directories are shared and downloaded): it is read as data, every
    `_target_` in it must be a shipped component (or one the user names in `overrides`), and it
    is validated like a config rlzoo-train composes; a ConfigError says what does not fit."""
    from rlzoo.config import ConfigError, load_untrusted_config, validate
    from rlzoo.runs import checkpoint_path

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        debug = Path("runs", "debug", *run_dir.parts[1:]) if run_dir.parts[:1] == ("runs",) else None
        hint = (f" (the same run with debug=tiny is in {debug}: debug runs write under runs/debug/)"
                if debug is not None and debug.is_dir() else "")
        raise ConfigError(f"run_dir={str(run_dir)!r} is not a directory{hint}")
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"run_dir={str(run_dir)!r} holds no run (no config.yaml)")
    checkpoint = checkpoint_path(run_dir)
    if not checkpoint.exists():
        raise ConfigError(f"run_dir={str(run_dir)!r} has no checkpoint yet ({checkpoint})")
    cfg = load_untrusted_config(run_dir / "config.yaml", list(overrides))
    try:
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"run_dir={str(run_dir)!r}: {exc}") from None
    return cfg, checkpoint


def load_run(run_dir: Path, overrides: Sequence[str] = ()):
    """(config, task, policy) of a trained run, its weights from the last checkpoint."""
    from rlzoo.config import build
    from rlzoo.config.build import use_headline
    from rlzoo.policies import make_policy
    from rlzoo.runs import load_checkpoint

    cfg, checkpoint = open_run(run_dir, overrides)
    task = build(cfg.task)
    use_headline(task, build(cfg.reward))  # measured as its training run measured it
    policy = make_policy(task.load_base_model(cfg.model), cfg.model)
    load_policy_state(policy, load_checkpoint(checkpoint), checkpoint)
    return cfg, task, policy


def load_policy_state(policy, state: dict, checkpoint: Path) -> None:
    """The policy's weights from a checkpoint's state, or a CheckpointError naming the file when
    they do not fit this model (another task's or another size's checkpoint)."""
    from rlzoo.errors import CheckpointError

    try:
        policy.load_state_dict(state["policy"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"checkpoint {checkpoint} does not fit this run's model ({type(exc).__name__}: "
                              f"{reason}); it was left in place") from None
