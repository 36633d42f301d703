"""The RL loop, readable top to bottom (README, Architecture):

    for each iteration:
        prompts -> sampler(old policy) -> Rollout
        reward(x0, prompts) -> advantage(rewards, groups) -> A
        each learner beside the policy learns from the rollout     # e.g. DMD's fake score (Paper B)
        for each of inner_epochs x minibatches updates (one by default):
            for each loss part of objective.losses(minibatch, A):       # gradient accumulation
                part -> backward                                        # a likelihood term's
                                                                        # objective + beta·kl, or
                                                                        # a pathwise part (DMD)
            optimizer step -> lr schedule -> evaluation EMA
        old-policy EMA -> log / eval / checkpoint

The EMA decays count optimizer steps (the peers' global_step), not iterations. Bookkeeping
(compute, budgets, summary.json, files) lives in `rlzoo.runs`. Under torchrun each rank rolls out
its share of the prompt groups, and rewards, gradients and statistics meet in rlzoo.distributed;
rank 0 alone writes.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rlzoo import distributed
from rlzoo.config import config_differences, run_fingerprint
from rlzoo.errors import CheckpointError
from rlzoo.evaluate import WEIGHTS, eval_protocol, eval_sampler, eval_weights, evaluate
from rlzoo.old_policy import eval_ema_decay, old_policy_decay
from rlzoo.policies import make_policy
from rlzoo.rng import KeyedDraws, StreamDraws
from rlzoo.runs import (
    JsonlLogger,
    Phase,
    Progress,
    ProgressBar,
    atomic_torch_save,
    atomic_write_bytes,
    checkpoint_path,
    format_metrics,
    iteration_record,
    load_checkpoint,
    truncate_jsonl,
    write_summary,
)
from rlzoo.types import Components, Rollout, UpdateBatch
from rlzoo.warm_start import warm_start


class NonFiniteLoss(RuntimeError):
    """The loss went NaN/inf; the last checkpoint still holds finite weights."""


def minibatch_rows(batch: int, group_size: int, minibatches: int,
                   generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices of each optimizer step's minibatch: whole prompt groups, shuffled, split into
    `minibatches` equal parts (one part holding every row when minibatches = 1)."""
    if minibatches == 1:
        return [torch.arange(batch)]
    groups = torch.randperm(batch // group_size, generator=generator)
    return [(part.sort().values[:, None] * group_size + torch.arange(group_size)).flatten()
            for part in groups.chunk(minibatches)]


def grid_file_name(record: dict) -> str:
    """The name of an evaluation's sample grid: its iteration and the compute spent by then."""
    return f"iter{record['iteration']:06d}_nfe{record['nfe_forward'] + record['nfe_backward']}.png"


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, components: Components,
                 dist: distributed.Dist = distributed.SINGLE):
        self.cfg, self.run_dir, self.device, self.dist = cfg, Path(run_dir), torch.device(cfg.device), dist
        self.keyed = cfg.train.get("rng", "stream") == "keyed"
        c = components
        self.task, self.sampler, self.estimator, self.objective = c.task, c.sampler, c.estimator, c.objective
        self.advantage, self.kl, self.reward, self.learners = c.advantage, c.kl, c.reward, list(c.learners)
        self.loggers = [JsonlLogger(self.run_dir), *c.loggers] if dist.is_main else []
        # rank 0 builds the model first: what the task caches on the way (t2i's text embeddings) the
        # other ranks then read instead of computing and writing it again
        if dist.active and not dist.is_main:
            distributed.barrier(dist)
        base = self.task.load_base_model(cfg.model)
        if dist.active and dist.is_main:
            distributed.barrier(dist)
        self.policy = make_policy(base.to(self.device), cfg.model)
        for learner in self.learners:  # each makes its view of the policy (a fake score: the teacher's copy)
            learner.attach(self.policy)
        self.optimizer = c.optimizer(self.policy.parameters())
        self.lr_schedule = c.lr_schedule(self.optimizer)
        self.eval_sampler = eval_sampler(cfg)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        self.progress = Progress()
        self.teacher_cache: dict = {}  # eval.teacher_steps: the teacher's samples, drawn once per run
        self.started = False  # True once the run's state is loaded or its fresh record begun
        self.checkpoint_iteration: int | None = None
        self.checkpoint_time = time.monotonic()

    # ------------------------------------------------------------------------------ the loop
    def restore(self) -> None:
        """A resumed run's state from its checkpoint (everything checked before any file of the run
        is touched; a missing config.yaml written back from the checkpoint's record); nothing for a
        new run."""
        if self.started or not self.checkpoint_path.exists():
            return
        record = self.load_checkpoint()
        self.started = True
        if self.dist.is_main:
            if not (self.run_dir / "config.yaml").exists():  # (evaluate and export read it)
                atomic_write_bytes(self.run_dir / "config.yaml", OmegaConf.to_yaml(record or self.cfg, resolve=True).encode(),
                                   private=True)
            print(f"[rlzoo] resuming {self.run_dir} from iteration {self.progress.iteration}")

    def fit(self) -> dict:
        main = self.dist.is_main
        if main and self.dist.active:
            print(f"[rlzoo] data parallel over {self.dist.world} ranks ({'nccl' if 'cuda' in self.dist.device else 'gloo'})")
        self.restore()
        if not self.started:
            self.started = True
            if self.cfg.get("init_from") is not None:  # a warm start: the policy begins from another run's weights
                self.progress.started_from = warm_start(self.policy, Path(str(self.cfg.init_from)).expanduser())
            self.write_summary("running")
            # the base model (a warm start: the weights it starts from)
            self.run_eval("reference" if self.progress.started_from is None else self.eval_view, moment="before")
            # the run directory is claimed (config.yaml + a checkpoint) only once the run has started
            if main:
                atomic_write_bytes(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True).encode(),
                                   private=True)
            self.save_checkpoint()
        self.write_summary("running")
        bar = ProgressBar(self.cfg.train, self.progress, enabled=self.cfg.progress_bar and main)
        c = self.progress.compute
        began = (self.progress.iteration, c.training_seconds, c.nfe)  # the pace is measured from here
        while not self.stopping():
            record = self.train_step()
            bar.update(reward=f"{record['reward/reward']:.3f}", kl=f"{record['kl']:.2e}")
            if main and self.progress.iteration == began[0] + 1:  # how long the rest takes on this machine
                bar.write(f"[rlzoo] estimate: {self.progress.estimate(self.cfg.train, self.cfg.eval, began)}")
            if self.progress.eval_due(self.cfg.eval) and not self.stopping():
                metrics = self.run_eval(self.eval_view)  # (the final evaluation follows the loop)
                if main:
                    bar.write(f"[eval] iteration {self.progress.iteration}: " + format_metrics(metrics))
            if self.checkpoint_due():
                self.save_checkpoint()
        bar.close()
        if main:
            print(f"[rlzoo] stopped: {self.progress.describe_stop(self.cfg.train)}")
            if self.progress.stopped_by_time(self.cfg.train):
                print(f"[rlzoo] warning: the wall-clock guard train.max_minutes={self.cfg.train.max_minutes} stopped "
                      f"the run before its budget: how far it got depends on this machine's speed, so its numbers "
                      f"are not comparable (summary.json: stopped_by_time)")
        self.run_eval(self.eval_view, moment="after")
        self.save_checkpoint()
        summary = self.write_summary("completed")
        distributed.barrier(self.dist)  # no rank leaves while rank 0 still writes
        return summary

    def checkpoint_due(self) -> bool:
        """Every `checkpoint_every` iterations, and once `checkpoint_every_minutes` have passed since
        the last checkpoint (rank 0's clock decides for every rank)."""
        every, minutes = self.cfg.checkpoint_every, self.cfg.get("checkpoint_every_minutes")
        due = bool(every) and self.progress.iteration % int(every) == 0
        late = minutes is not None and time.monotonic() - self.checkpoint_time >= float(minutes) * 60
        return due or distributed.agree(late and self.dist.is_main, self.dist)

    def stopping(self) -> bool:
        """Whether training stops now: iterations and compute agree on every rank by construction,
        a wall-clock budget is agreed (rank clocks differ)."""
        return distributed.agree(self.progress.stop_reason(self.cfg.train) is not None, self.dist)

    def train_step(self) -> dict:
        train, compute = self.cfg.train, self.progress.compute
        batch, group_size, d = int(train.batch_size), int(train.group_size), self.dist
        nfe_before = (compute.nfe_forward, compute.nfe_backward)
        # this rank's prompt groups and rows (all of them in one process)
        split = distributed.group_split(batch // group_size, d.world)
        rows = torch.arange(split[d.rank].start * group_size, split[d.rank].stop * group_size)
        counts = [len(groups) * group_size for groups in split]  # every rank's rows, for the gathers
        draws = self.draws("rollout", rows)
        with Phase(compute, "rollout"):
            prompt_ids = self.task.sample_train_prompts(batch // group_size, self.generator)
            cond = self.task.group_conditioning(prompt_ids, group_size)
            group_ids = cond.group_ids
            if d.active:
                cond = cond.select(rows)
            cond = self.task.guided(cond, self.sampler.cfg_scale).to(self.device)
            noise = draws.randn((len(rows), *self.task.sample_shape)).to(self.device)
            keep_path = "trajectory" in self.estimator.needs or bool(self.objective.sampler_needs)
            rollout = self.sampler.sample(self.policy.velocity_fn("old"), noise, cond, record=keep_path,
                                          generator=draws)
            compute.add(rollout.cost)

        with Phase(compute, "reward"):
            # a reward that fails on one rank (a remote scorer's error) stops every rank
            keyed = {"draws": self.draws("reward", rows)} if self.keyed and self.reward.takes_draws else {}
            rewards = distributed.on_every_rank(lambda: self.reward(self.task, rollout.x0, cond, **keyed), d)
            compute.add(self.reward.cost(len(rows)))
            rewards = {k: distributed.gather_rows(v, counts, d) for k, v in rewards.items()}  # the whole batch
            advantage = self.advantage(rewards["reward"], group_ids.to(rewards["reward"].device))
            advantage = advantage.to(self.device)  # a CPU verifier's rewards meet GPU log-likelihoods

        for learner in self.learners:  # they learn from the latest samples, before the policy moves
            with Phase(compute, learner.name):
                if self.keyed:  # its rows' numbers by key, its mean over all ranks (rlzoo.distributed)
                    compute.add(learner.update(rollout, draws=self.draws(learner.name, rows), dist=d, rows=batch))
                else:
                    compute.add(learner.update(rollout))

        with Phase(compute, "train"):
            self.policy.train()
            updates, shuffle = [], self.draws("minibatch", torch.arange(0)).shared
            update_draws = self.draws("update", rows)
            first = int(rows[0])
            for _ in range(int(train.inner_epochs)):  # several updates per rollout: ratios move off 1
                for step_rows in minibatch_rows(batch, group_size, int(train.minibatches), shuffle):
                    # this rank's rows of the step, numbered within its rollout
                    mine = step_rows[(step_rows >= first) & (step_rows < first + len(rows))] - first
                    part = rollout if len(mine) == len(rows) else rollout.select(mine)
                    updates.append(self.update(part, advantage[(mine + first).to(advantage.device)],
                                               update_draws.select(mine), len(step_rows)))
            self.progress.iteration += 1
            # the behaviour policy moves once per rollout, after its last update
            self.policy.update_old(old_policy_decay(int(train.old_policy_schedule), self.progress.optimizer_steps))

        if d.active:  # every rank counts the compute of all ranks
            spent = distributed.reduce_numbers({"nfe_forward": compute.nfe_forward - nfe_before[0],
                                                "nfe_backward": compute.nfe_backward - nfe_before[1]}, d)
            compute.nfe_forward, compute.nfe_backward = (nfe_before[0] + int(spent["nfe_forward"]),
                                                         nfe_before[1] + int(spent["nfe_backward"]))
        record = iteration_record(self.progress, rewards, advantage, updates, self.optimizer, self.device)
        record.update({f"{learner.name}/{key}": value for learner in self.learners
                       for key, value in learner.metrics().items()})
        self.log("metrics", record)
        return record

    def update(self, rollout: Rollout, advantage: torch.Tensor, draws=None, rows: int | None = None) -> dict:
        """One optimizer step on `rollout` (this rank's rows of a step of `rows` over all ranks):
        the objective's loss is formed and back-propagated part by part (gradient accumulation),
        so memory does not grow with the number of terms; then the gradients are summed over ranks."""
        self.optimizer.zero_grad(set_to_none=True)
        stats = {"loss": 0.0, "kl": 0.0, "log_ratio_abs_max": 0.0, "ratio_mean": 0.0, "likelihood_terms": 0}
        batch = UpdateBatch(self.policy, rollout, advantage, self.estimator, self.kl, self.task,
                            int(self.cfg.train.micro_batch_size), self.generator if draws is None else draws,
                            self.progress.iteration, rows)
        failure = None
        try:
            for part in (self.objective.losses(batch) if len(rollout.x0) else ()):
                self.backward(part.loss)
                self.progress.compute.add(part.cost)  # what the part says it spent
                stats["loss"] += float(part.loss.detach())
                for key, value in part.stats.items():
                    stats[key] = max(stats[key], value) if key == "log_ratio_abs_max" else stats.get(key, 0) + value
        except NonFiniteLoss as exc:
            failure = exc
        if distributed.agree(failure is not None, self.dist):  # every rank stops, none waits in the all-reduce
            raise failure or NonFiniteLoss(f"non-finite loss on another rank at iteration {self.progress.iteration + 1}")
        if self.dist.active:  # (a rank without rows in this step still takes part, with zeros)
            stats = {key: stats.get(key, 0.0) for key in distributed.all_keys(stats, self.dist)}
            distributed.sync_grads(self.policy.parameters(), self.dist)
            stats = distributed.reduce_numbers(stats, self.dist, maximum=("log_ratio_abs_max", "likelihood_terms"))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.lr_schedule.step()
        self.progress.optimizer_steps += 1
        self.policy.update_ema(eval_ema_decay(self.progress.optimizer_steps, self.cfg.eval.ema_cap)
                                if self.cfg.eval.ema else 0.0)
        return {**stats, "grad_norm": float(grad_norm)}

    def backward(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):  # stop before the optimizer spreads it into the weights
            raise NonFiniteLoss(f"non-finite loss ({float(loss.detach())}) at iteration "
                                f"{self.progress.iteration + 1}")
        loss.backward()

    def draws(self, purpose: str, rows: torch.Tensor):
        """The random numbers of this iteration's `purpose` for `rows` (global row numbers): the run's
        one stream, or (train.rng=keyed) a generator per row that no split of the batch changes."""
        if self.keyed:
            return KeyedDraws(int(self.cfg.seed), self.progress.iteration, purpose, rows)
        return StreamDraws(self.generator)

    # ------------------------------------------------------------------------- measurement
    @property
    def eval_view(self) -> str:  # the policy view evaluations measure (Paper A: an EMA)
        return WEIGHTS[eval_weights(self.cfg)]

    def run_eval(self, view: str, moment: str | None = None) -> dict:
        """A held-out evaluation of the policy's `view`, logged, with its sample grid written as
        samples/iter<iteration>_nfe<forward + backward evaluations>.png; the first and the last
        (`moment` "before", "after") also as samples/before.png and samples/after.png."""
        e = self.cfg.eval
        with Phase(self.progress.compute, "eval"):
            metrics, (x0, cond) = evaluate(self.task, self.policy, view, self.eval_sampler,
                                           e.samples, e.seed, e.batch_size, self.device, e.cfg_scale,
                                           e.get("teacher_steps"), self.teacher_cache, self.dist)
        record = self.progress.record_eval(metrics, self.cfg.report.get("threshold"))
        self.log("eval", record)
        if self.dist.is_main:
            path = self.run_dir / "samples" / grid_file_name(record)
            self.task.save_grid(x0, cond, path)
            for logger in self.loggers:
                logger.log_image("heldout", path, record)
            if moment is not None:
                atomic_write_bytes(self.run_dir / "samples" / f"{moment}.png", path.read_bytes())
        return metrics

    def log(self, kind: str, record: dict) -> None:
        for logger in self.loggers:
            logger.log(kind, record)

    # ------------------------------------------------------------------------------- state
    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.run_dir)

    def save_checkpoint(self) -> None:
        """Tensors and plain values only, so it loads with weights_only=True (rank 0 writes it)."""
        self.checkpoint_iteration, self.checkpoint_time = self.progress.iteration, time.monotonic()
        if not self.dist.is_main:
            return
        atomic_torch_save({"progress": self.progress.state_dict(), "policy": self.policy.state_dict(),
                           "optimizer": self.optimizer.state_dict(),
                           "lr_schedule": self.lr_schedule.state_dict(), "reward": self.reward.state_dict(),
                           "learners": {learner.name: learner.state_dict() for learner in self.learners},
                           "objective": self.objective.state_dict(),
                           "generator": self.generator.get_state(), "run": run_fingerprint(self.cfg)},
                          self.checkpoint_path)
        self.policy.export_adapter(self.eval_view, self.run_dir / "lora",  # LoRA policies: for diffusers
                                   {"weights": eval_weights(self.cfg), "iteration": self.progress.iteration})

    def load_checkpoint(self) -> dict | None:
        """Restore the run from its checkpoint; returns the config it records. A checkpoint that
        cannot be read, was written by a run with another config, or does not fit this model is a
        one-line CheckpointError raised before any file is touched; only then are the logs cut back
        to the checkpoint."""
        path = self.checkpoint_path
        state = load_checkpoint(path, map_location=self.device)
        differs = config_differences(state.get("run"), run_fingerprint(self.cfg))
        if differs:
            raise CheckpointError(f"checkpoint {path} was written by a run with another config (differs in "
                                  f"{', '.join(differs[:5])}); it was left in place: choose another run_dir=...")
        try:
            self.progress = Progress.from_state_dict(state["progress"])
            self.policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            self.reward.load_state_dict(state.get("reward", {}))
            for learner in self.learners:
                learner.load_state_dict(state["learners"][learner.name])
            self.objective.load_state_dict(state.get("objective", {}))
            self.generator.set_state(state["generator"].cpu())
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split())[:160]
            raise CheckpointError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: {reason}); "
                                  f"it was left in place: choose another run_dir=..., or move the checkpoint "
                                  f"away to start this run afresh") from None
        self.checkpoint_iteration = self.progress.iteration
        for name in ("metrics", "eval") if self.dist.is_main else ():
            aside = truncate_jsonl(self.run_dir / f"{name}.jsonl", self.progress.iteration)
            if aside is not None:
                print(f"[rlzoo] {name}.jsonl had lines that are not JSON; the file as it was is kept as {aside}")
        return state.get("run")

    def write_summary(self, status: str, error: str | None = None) -> dict | None:
        if not self.dist.is_main:
            return None
        return write_summary(self.run_dir, status, self.progress, error=error, device=self.device,
                             threshold=self.cfg.report.get("threshold"),
                             eval_protocol=eval_protocol(self.cfg, self.task),
                             stopped_by_time=self.progress.stopped_by_time(self.cfg.train))
