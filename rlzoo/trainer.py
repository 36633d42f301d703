"""The RL loop, readable top to bottom (README, Architecture):

    for each iteration:
        prompts -> sampler(old policy) -> Rollout
        reward(x0, prompts) -> advantage(rewards, groups) -> A
        for each of inner_epochs x minibatches updates (one by default):
            for each likelihood term from estimator(policy, minibatch):   # gradient accumulation
                loss = mean(objective(term, A) + beta·kl(term)) · term.weight  -> backward
            optimizer step -> evaluation EMA
        old-policy EMA -> log / eval / checkpoint

The EMA decays count optimizer steps (the peers' global_step), not iterations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from rlzoo.old_policy import ema_update, eval_ema_decay, old_policy_decay
from rlzoo.policies import Policy
from rlzoo.runs import (
    JsonlLogger,
    atomic_torch_save,
    atomic_write_json,
    peak_memory_bytes,
    truncate_jsonl,
)
from rlzoo.samplers import EulerSampler, Sampler
from rlzoo.types import Conditioning

PHASES = ("rollout", "reward", "train", "eval")


@dataclass
class Compute:
    """Compute spent so far: per-sample model evaluations and wall-clock by phase."""

    nfe_forward: int = 0
    nfe_backward: int = 0
    wall: dict = field(default_factory=lambda: {p: 0.0 for p in PHASES})

    def as_dict(self, device: torch.device) -> dict:
        return {"nfe_forward": self.nfe_forward, "nfe_backward": self.nfe_backward,
                "wall_s": sum(self.wall.values()), "wall_split_s": dict(self.wall),
                "peak_mem_bytes": peak_memory_bytes(device)}


class NonFiniteLoss(RuntimeError):
    """The loss went NaN/inf; the last checkpoint still holds finite weights."""


class Phase:
    """Context manager adding the elapsed wall-clock to one phase of `Compute`."""

    def __init__(self, compute: Compute, name: str):
        self.compute, self.name = compute, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.compute.wall[self.name] += time.perf_counter() - self.start


def group_conditioning(task, prompt_ids: list[int], group_size: int, prompts: list[str]) -> Conditioning:
    """Each chosen prompt repeated `group_size` times; its group id is its position in the batch."""
    repeated = [prompts[i] for i in prompt_ids for _ in range(group_size)]
    ids = torch.tensor(prompt_ids).repeat_interleave(group_size)
    groups = torch.arange(len(prompt_ids)).repeat_interleave(group_size)
    return task.conditioning(repeated, prompt_ids=ids, group_ids=groups)


def minibatch_rows(batch: int, group_size: int, minibatches: int,
                   generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices of each optimizer step's minibatch: whole prompt groups, shuffled, split into
    `minibatches` equal parts (one part holding every row when minibatches = 1)."""
    if minibatches == 1:
        return [torch.arange(batch)]
    groups = torch.randperm(batch // group_size, generator=generator)
    return [(part.sort().values[:, None] * group_size + torch.arange(group_size)).flatten()
            for part in groups.chunk(minibatches)]


def merge_update_stats(updates: list[dict]) -> dict:
    """One record for an iteration's updates: means, except the max |log ratio| (a max)."""
    merged = {k: sum(u[k] for u in updates) / len(updates) for k in updates[0]}
    merged["log_ratio_abs_max"] = max(u["log_ratio_abs_max"] for u in updates)
    merged["likelihood_terms"] = sum(u["likelihood_terms"] for u in updates)
    return merged


def eval_sampler(cfg: DictConfig) -> EulerSampler:
    """The evaluation protocol's sampler: Euler ODE, eval.num_steps, the rollout sampler's shift."""
    return EulerSampler(cfg.eval.num_steps, cfg.eval.get("shift", cfg.sampler.shift))


@torch.no_grad()
def evaluate(task, policy: Policy, view: str, sampler: Sampler, num_samples: int,
             seed: int, batch_size: int, device: torch.device):
    """Held-out evaluation with fixed noise: (metrics, (x0, conditioning) of 64 samples spread
    over the whole evaluation set for a grid)."""
    prompts = task.heldout_prompts()
    generator = torch.Generator().manual_seed(seed)
    ids = task.eval_prompt_ids(num_samples)
    scores, samples = [], []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        cond = task.conditioning([prompts[i] for i in chunk], prompt_ids=torch.tensor(chunk),
                                 group_ids=torch.tensor(chunk)).to(device)
        noise = torch.randn((len(chunk), *task.sample_shape), generator=generator).to(device)
        rollout = sampler.sample(policy.velocity_fn(view), noise, cond)
        scores.append(task.score(rollout.x0, cond))
        samples.append(rollout.x0.cpu())
    merged = {k: torch.cat([s[k] for s in scores]) for k in scores[0]}
    shown = torch.linspace(0, len(ids) - 1, min(64, len(ids))).round().long()
    grid_cond = task.conditioning([prompts[ids[i]] for i in shown.tolist()],
                                  prompt_ids=torch.tensor(ids)[shown], group_ids=shown)
    return task.summarize(merged, torch.tensor(ids)), (torch.cat(samples)[shown], grid_cond)


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, components: dict):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = torch.device(cfg.device)
        c = components
        self.task, self.sampler, self.estimator = c["task"], c["sampler"], c["estimator"]
        self.objective, self.advantage, self.kl, self.reward = (
            c["objective"], c["advantage"], c["kl"], c["reward"])
        self.loggers = [JsonlLogger(self.run_dir)] + c.get("extra_loggers", [])
        base = self.task.load_base_model(cfg.model).to(self.device)
        self.policy = Policy(base)
        t = cfg.train
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=t.lr, betas=tuple(t.betas),
                                           weight_decay=t.weight_decay)
        self.eval_sampler = eval_sampler(cfg)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self.compute = Compute()
        self.iteration = 0
        self.optimizer_steps = 0  # the EMA schedules count these, as the peers' global_step
        self.base_metrics: dict | None = None
        self.best_metrics: dict | None = None
        self.last_metrics: dict | None = None
        self.reached: dict | None = None  # compute at which held-out reward first hit report.threshold
        self.last_eval_nfe = 0

    # ----------------------------------------------------------------------------- state
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def save_checkpoint(self) -> None:
        atomic_torch_save({
            "iteration": self.iteration, "optimizer_steps": self.optimizer_steps,
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
            "compute": {"nfe_forward": self.compute.nfe_forward,
                        "nfe_backward": self.compute.nfe_backward, "wall": self.compute.wall},
            "base_metrics": self.base_metrics, "best_metrics": self.best_metrics,
            "last_metrics": self.last_metrics, "reached": self.reached, "last_eval_nfe": self.last_eval_nfe,
        }, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self.iteration = state["iteration"]
        self.optimizer_steps = state["optimizer_steps"]
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.compute = Compute(**state["compute"])
        self.base_metrics = state["base_metrics"]
        self.best_metrics = state["best_metrics"]
        self.last_metrics = state["last_metrics"]
        self.reached = state["reached"]
        self.last_eval_nfe = state["last_eval_nfe"]
        for name in ("metrics", "eval"):
            truncate_jsonl(self.run_dir / f"{name}.jsonl", self.iteration)

    def write_summary(self, status: str, error: str | None = None) -> dict:
        summary = {
            "status": status, "iterations": self.iteration, "error": error,
            "base": self.base_metrics, "final": self.last_metrics, "best": self.best_metrics,
            "compute": self.compute.as_dict(self.device),
            "threshold": self.cfg.report.get("threshold"), "threshold_reached": self.reached,
            "eval_protocol": {"split": "heldout", "sampler": "euler",
                              "num_steps": self.eval_sampler.num_steps,
                              "samples": int(self.cfg.eval.samples),
                              "weights": "ema" if self.cfg.eval.ema else "current",
                              "num_prompts": len(self.task.heldout_prompts()), "seed": int(self.cfg.eval.seed)},
            "run_dir": str(self.run_dir),
        }
        atomic_write_json(summary, self.run_dir / "summary.json")
        return summary

    def log(self, kind: str, record: dict) -> None:
        for logger in self.loggers:
            logger.log(kind, record)

    # ----------------------------------------------------------------------------- eval
    def run_eval(self, view: str, grid_name: str | None = None) -> dict:
        e = self.cfg.eval
        with Phase(self.compute, "eval"):
            metrics, (x0, cond) = evaluate(self.task, self.policy, view, self.eval_sampler,
                                              e.samples, e.seed, e.batch_size, self.device)
        if grid_name is not None:
            self.task.save_grid(x0, cond, self.run_dir / "samples" / f"{grid_name}.png")
        record = {"iteration": self.iteration, **metrics,
                  "nfe_forward": self.compute.nfe_forward, "nfe_backward": self.compute.nfe_backward,
                  "wall_s": sum(self.compute.wall.values()) - self.compute.wall["eval"]}
        self.log("eval", record)
        self.last_metrics = metrics
        self.last_eval_nfe = self.nfe_spent
        threshold = self.cfg.report.get("threshold")
        if threshold is not None and self.reached is None and metrics["reward"] >= threshold:
            self.reached = {k: record[k] for k in ("iteration", "nfe_forward", "nfe_backward", "wall_s")}
        if self.best_metrics is None or metrics["reward"] > self.best_metrics["reward"]:
            self.best_metrics = {**metrics, "iteration": self.iteration}
        return metrics

    # ----------------------------------------------------------------------------- train
    def train_step(self) -> dict:
        t = self.cfg.train
        train_prompts = self.task.train_prompts()
        B = int(t.batch_size)
        num_prompts = B // int(t.group_size)

        with Phase(self.compute, "rollout"):
            prompt_ids = self.task.sample_train_prompts(num_prompts, self.generator)
            cond = group_conditioning(self.task, prompt_ids, t.group_size, train_prompts).to(self.device)
            noise = torch.randn((B, *self.task.sample_shape), generator=self.generator).to(self.device)
            rollout = self.sampler.sample(self.policy.velocity_fn("old"), noise, cond,
                                          record=self.estimator.needs_trajectory, generator=self.generator)
            self.compute.nfe_forward += B * rollout.nfe

        with Phase(self.compute, "reward"):
            rewards = self.reward(self.task, rollout.x0, cond)
            advantage = self.advantage(rewards["reward"], cond.group_ids.to(rewards["reward"].device))
            advantage = advantage.to(self.device)  # a CPU verifier's rewards meet GPU log-likelihoods

        with Phase(self.compute, "train"):
            self.policy.current.train()
            updates = []
            for _ in range(int(t.inner_epochs)):  # several updates per rollout: ratios move off 1
                for rows in minibatch_rows(B, int(t.group_size), int(t.minibatches), self.generator):
                    part = rollout if len(rows) == B else rollout.select(rows)
                    updates.append(self.update(part, advantage[rows.to(advantage.device)]))
            self.iteration += 1
            # the behaviour policy moves once per rollout, after its last update
            ema_update(self.policy.old, self.policy.current,
                       old_policy_decay(int(t.old_policy_schedule), self.optimizer_steps))

        r = rewards["reward"]
        record = {"iteration": self.iteration,
                  **{f"reward/{k}": float(v.float().mean()) for k, v in rewards.items()},
                  "reward_std": float(r.float().std()),
                  "advantage_abs_mean": float(advantage.abs().mean()),
                  **merge_update_stats(updates), "updates": len(updates),
                  **{k: v for k, v in self.compute.as_dict(self.device).items() if k != "wall_split_s"}}
        self.log("metrics", record)
        return record

    def update(self, rollout, advantage: torch.Tensor) -> dict:
        """One optimizer step on `rollout`: the loss is formed and back-propagated per likelihood
        term (gradient accumulation), so memory does not grow with the number of terms."""
        t = self.cfg.train
        B = rollout.x0.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        need_ref = self.kl.needs_reference and self.kl.beta > 0
        stats = {"loss": 0.0, "kl": 0.0, "log_ratio_abs_max": 0.0, "ratio_mean": 0.0}
        num_terms = 0
        for term in self.estimator.terms(self.policy, rollout, t.micro_batch_size,
                                         need_reference=need_ref, sampler=self.sampler,
                                         generator=self.generator):
            per_sample = self.objective(term, advantage[term.index].to(term.log_lik.dtype))
            if need_ref:
                kl = self.kl(term)
                per_sample = per_sample + self.kl.beta * kl
                stats["kl"] += float(kl.detach().sum()) * term.weight / B
            loss = per_sample.sum() / B * term.weight
            if not torch.isfinite(loss):  # stop before the optimizer spreads it into the weights
                raise NonFiniteLoss(f"non-finite loss ({float(loss.detach())}) at iteration {self.iteration + 1}")
            loss.backward()
            log_ratio = (term.log_lik.detach() - term.log_lik_old)
            stats["loss"] += float(loss.detach())
            stats["ratio_mean"] += float(torch.exp(log_ratio).sum()) * term.weight / B
            stats["log_ratio_abs_max"] = max(stats["log_ratio_abs_max"], float(log_ratio.abs().max()))
            n = len(term.index)
            self.compute.nfe_forward += n * term.forwards
            self.compute.nfe_backward += n
            num_terms += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), t.max_grad_norm)
        self.optimizer.step()
        self.optimizer_steps += 1
        ema_update(self.policy.eval, self.policy.current,
                   eval_ema_decay(self.optimizer_steps, self.cfg.eval.ema_cap) if self.cfg.eval.ema else 0.0)
        return {**stats, "grad_norm": float(grad_norm), "likelihood_terms": num_terms}

    def fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if self.checkpoint_path.exists():
            self.load_checkpoint()
            print(f"[rlzoo] resuming {self.run_dir} from iteration {self.iteration}")
        else:
            self.write_summary("running")
            self.base_metrics = self.run_eval("reference", grid_name="before")
            self.best_metrics = {**self.base_metrics, "iteration": 0}
            self.save_checkpoint()
        self.write_summary("running")
        from tqdm import tqdm

        bar = tqdm(total=t.iterations, initial=self.iteration, desc="rl", dynamic_ncols=True,
                   disable=not cfg.progress_bar)
        while not self.stop_reason():
            record = self.train_step()
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward/reward']:.3f}", kl=f"{record['kl']:.2e}")
            if self.eval_due() and not self.stop_reason():  # the final evaluation follows the loop
                metrics = self.run_eval("eval" if cfg.eval.ema else "current")
                bar.write(f"[eval] iteration {self.iteration}: " + _fmt(metrics))
            if self.iteration % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        print(f"[rlzoo] stopped: {self.stop_reason()} ({self.iteration} iterations, "
              f"{self.nfe_spent:,} model evaluations, {self.training_seconds() / 60:.1f} min of training)")
        self.run_eval("eval" if cfg.eval.ema else "current", grid_name="after")
        self.save_checkpoint()
        return self.write_summary("completed")

    def training_seconds(self) -> float:
        return sum(v for k, v in self.compute.wall.items() if k != "eval")

    @property
    def nfe_spent(self) -> int:
        return self.compute.nfe_forward + self.compute.nfe_backward

    def stop_reason(self) -> str | None:
        """Why training stops now (train.iterations or a budget), or None."""
        if self.iteration >= int(self.cfg.train.iterations):
            return f"train.iterations={int(self.cfg.train.iterations)} done"
        spent = budget_spent(self.cfg.train, self.nfe_spent, self.training_seconds())
        return f"{spent} reached" if spent else None

    def eval_due(self) -> bool:
        """Every eval.every iterations, or, with eval.every_nfe, each time the compute spent
        crosses a multiple of it: rows that spend different compute per iteration are then
        measured at the same compute points."""
        every_nfe = self.cfg.eval.get("every_nfe")
        if every_nfe:
            return self.nfe_spent // int(every_nfe) > self.last_eval_nfe // int(every_nfe)
        return self.iteration % int(self.cfg.eval.every) == 0


def budget_spent(train: DictConfig, nfe: int, training_seconds: float) -> str | None:
    """Which training budget (train.max_minutes of wall-clock, train.max_nfe forward + backward
    model evaluations) is used up, if any."""
    if train.get("max_minutes") is not None and training_seconds >= float(train.max_minutes) * 60:
        return f"training wall-clock budget of {train.max_minutes} min"
    if train.get("max_nfe") is not None and nfe >= int(train.max_nfe):
        return f"model-evaluation budget of {int(train.max_nfe):,} (forward + backward)"
    return None


def is_finished(summary: dict, cfg: DictConfig) -> bool:
    """Whether a run's summary already satisfies this config's stopping rule (iterations or a
    budget), so rerunning it would add nothing; a raised budget or iteration count resumes it."""
    if summary.get("status") != "completed":
        return False
    compute = summary["compute"]
    return summary["iterations"] >= int(cfg.train.iterations) or budget_spent(
        cfg.train, compute["nfe_forward"] + compute["nfe_backward"],
        compute["wall_s"] - compute["wall_split_s"]["eval"]) is not None


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))


def print_report(summary: dict) -> None:
    base, final, best = summary["base"], summary["final"], summary["best"]
    keys = [k for k in base if isinstance(base[k], (int, float))]
    print(f"\n{'metric':<28}{'base':>9}{'final':>9}{'best':>9}")
    for k in keys:
        print(f"{k:<28}{base[k]:>9.3f}{final[k]:>9.3f}{best.get(k, float('nan')):>9.3f}")
    c = summary["compute"]
    print(f"\nNFE forward {c['nfe_forward']:,}  backward {c['nfe_backward']:,}  "
          f"wall {c['wall_s']:.1f}s  peak memory {c['peak_mem_bytes'] / 2**20:.0f} MiB")
    print(f"run directory: {summary['run_dir']}")
