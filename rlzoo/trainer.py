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

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from rlzoo import distributed
from rlzoo.config import run_fingerprint
from rlzoo.evaluate import WEIGHTS, EvalProtocol, eval_weights, evaluate, protocol_record
from rlzoo.old_policy import eval_ema_decay, old_policy_decay
from rlzoo.policies import make_policy
from rlzoo.rewards import score
from rlzoo.rng import Randomness
from rlzoo.runs import Phase, Progress, ProgressBar, format_metrics, iteration_record
from rlzoo.runs.checkpointer import Checkpointer, Learners
from rlzoo.runs.record import RunRecord
from rlzoo.types import Components, Rollout, StepTotals, UpdateBatch
from rlzoo.warm_start import warm_start


class NonFiniteLoss(RuntimeError):
    """The loss went NaN/inf; the last checkpoint still holds finite weights."""


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, components: Components,
                 dist: distributed.Dist = distributed.SINGLE):
        self.cfg, self.run_dir, self.device, self.dist = cfg, Path(run_dir), torch.device(cfg.device), dist
        c = components
        self.task, self.sampler, self.estimator, self.objective = c.task, c.sampler, c.estimator, c.objective
        self.advantage, self.kl, self.reward, self.learners = c.advantage, c.kl, c.reward, list(c.learners)
        self.record = RunRecord(self.run_dir, c.loggers, writes=dist.is_main)  # (rank 0 owns the run directory)
        with distributed.rank_zero_first(dist):  # (what rank 0 caches on the way, the others read)
            base = self.task.load_base_model(cfg.model)
        self.policy = make_policy(base.to(self.device), cfg.model)
        for learner in self.learners:  # each makes its view of the policy (a fake score: the teacher's copy)
            learner.attach(self.policy)
        self.optimizer = c.optimizer(self.policy.parameters())
        self.lr_schedule = c.lr_schedule(self.optimizer)
        self.protocol, self.measured = EvalProtocol.from_config(cfg), WEIGHTS[eval_weights(cfg)]  # (Paper A: an EMA)
        # every random number of the run: the loop's stream, one per consumer that draws apart, or keyed
        self.randomness = Randomness(int(cfg.seed), cfg.train.get("rng", "stream"),
                                     ("reward", "objective", *(learner.name for learner in self.learners)))
        self.progress = Progress()
        self.checkpointer = Checkpointer(self.run_dir, {
            "policy": self.policy, "optimizer": self.optimizer, "lr_schedule": self.lr_schedule,
            "reward": self.reward, "learners": Learners(self.learners), "objective": self.objective,
            "rng": self.randomness}, run_fingerprint(cfg), writes=dist.is_main)
        self.teacher_cache: dict = {}  # eval.teacher_steps: the teacher's samples, drawn once per run
        self.started = False  # True once the run's state is loaded or its fresh record begun
        self.checkpoint_iteration: int | None = None
        self.checkpoint_time = time.monotonic()

    # ------------------------------------------------------------------------------ the loop
    def restore(self) -> None:
        """A resumed run's state from its checkpoint (rlzoo.runs.checkpointer: checked before any
        file of the run is touched); then the logs are cut back to it and a missing config.yaml is
        written back from its record. Nothing for a new run."""
        if self.started or not self.checkpointer.path.exists():
            return
        self.progress, record = self.checkpointer.load(self.device)
        self.started, self.checkpoint_iteration = True, self.progress.iteration
        self.record.cut_logs(self.progress.iteration)
        self.record.config(record or self.cfg, only_if_missing=True)  # (evaluate and export read it)
        self.record.say(f"[rlzoo] resuming {self.run_dir} from iteration {self.progress.iteration}")

    def start(self) -> None:
        """A new run: its warm start if any, the held-out evaluation of the weights it starts
        from; only then config.yaml and a first checkpoint claim the run directory."""
        self.started = True
        if self.cfg.get("init_from") is not None:  # a warm start: the policy begins from another run's weights
            self.progress.started_from = warm_start(self.policy, Path(str(self.cfg.init_from)).expanduser())
        self.write_summary("running")
        self.run_eval("reference" if self.progress.started_from is None else self.measured, moment="before")
        self.record.config(self.cfg)
        self.save_checkpoint()

    def fit(self) -> dict | None:
        self.restore()
        if not self.started:
            self.start()
        self.write_summary("running")
        bar = ProgressBar(self.cfg.train, self.progress, self.cfg.progress_bar and self.record.writes, self.record.writes)
        began = (self.progress.iteration, self.progress.compute.training_seconds, self.progress.compute.nfe)
        while not self.stopping():
            record = self.train_step()
            bar.update(reward=f"{record['reward/reward']:.3f}", kl=f"{record['kl']:.2e}")
            if self.progress.iteration == began[0] + 1:  # how long the rest takes on this machine
                bar.write(f"[rlzoo] estimate: {self.progress.estimate(self.cfg.train, self.cfg.eval, began)}")
            if self.progress.eval_due(self.cfg.eval) and not self.stopping():
                metrics = self.run_eval(self.measured)  # (the final evaluation follows the loop)
                bar.write(f"[eval] iteration {self.progress.iteration}: " + format_metrics(metrics))
            if self.checkpoint_due():
                self.save_checkpoint()
        bar.close()
        self.record.say(f"[rlzoo] stopped: {self.progress.describe_stop(self.cfg.train)}")
        self.run_eval(self.measured, moment="after")
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
        return due or distributed.agree(late and self.record.writes, self.dist)

    def stopping(self) -> bool:
        """Whether training stops now: iterations and compute agree on every rank by construction,
        a wall-clock budget is agreed (rank clocks differ)."""
        return distributed.agree(self.progress.stop_reason(self.cfg.train) is not None, self.dist)

    def train_step(self) -> dict:
        train, compute = self.cfg.train, self.progress.compute
        # this iteration's rows on this rank (all of them in one process) and their random numbers
        shard = distributed.Shard(self.dist, train.batch_size, train.group_size, self.randomness,
                                  self.progress.iteration)
        with shard.counting(compute):  # (every rank counts the compute of all ranks)
            with Phase(compute, "rollout"):
                prompt_ids = self.task.sample_train_prompts(shard.groups, self.randomness.stream())
                cond = self.task.group_conditioning(prompt_ids, shard.group_size)
                group_ids = cond.group_ids
                cond = self.task.guided(shard.mine(cond), self.sampler.cfg_scale).to(self.device)
                rollout = self.rollout(cond, shard.draws("rollout"), len(shard.rows))
            with Phase(compute, "reward"):  # (a reward that fails on one rank stops every rank)
                rewards = shard.on_every_rank(lambda: score(self.reward, self.task, rollout.x0, cond,
                                                            shard.draws("reward")))
                compute.add(self.reward.cost(len(shard.rows)))
                rewards = shard.gather(rewards)  # the whole batch's
                advantage = self.advantage(rewards["reward"], group_ids.to(rewards["reward"].device))
                advantage = advantage.to(self.device)  # a CPU verifier's rewards meet GPU log-likelihoods
            for learner in self.learners:  # they learn from the latest samples, before the policy moves
                with Phase(compute, learner.name):
                    compute.add(learner.update(rollout, shard.draws(learner.name), shard))
            with Phase(compute, "train"):
                updates = self.update_policy(rollout, advantage, shard)
        record = iteration_record(self.progress, rewards, advantage, updates, self.optimizer, self.device)
        record.update({f"{learner.name}/{key}": value for learner in self.learners
                       for key, value in learner.metrics().items()})
        self.record.log("metrics", record)
        return record

    def rollout(self, cond, draws, rows: int) -> Rollout:
        """`rows` samples of the behaviour ("old") policy from fresh noise, with their path where
        the estimator or the objective needs it."""
        noise = draws.randn((rows, *self.task.sample_shape)).to(self.device)
        keep_path = "trajectory" in self.estimator.needs or bool(self.objective.sampler_needs)
        rollout = self.sampler.sample(self.policy.velocity_fn("old"), noise, cond, record=keep_path, generator=draws)
        self.progress.compute.add(rollout.cost)
        return rollout

    def update_policy(self, rollout: Rollout, advantage: torch.Tensor, shard) -> list[dict]:
        """inner_epochs x minibatches optimizer steps on the rollout (whole prompt groups each);
        then the behaviour policy moves, once per rollout."""
        self.policy.train()
        train, updates = self.cfg.train, []
        draws, objective_draws = shard.draws("update"), shard.draws("objective")
        for step in shard.steps(train.inner_epochs, train.minibatches):
            part = rollout.select(step.local) if len(step.local) < len(rollout.x0) else rollout
            updates.append(self.update(UpdateBatch(
                self.policy, part, advantage[step.rows.to(advantage.device)], self.estimator, self.kl, self.task,
                int(train.micro_batch_size), draws.select(step.local), self.progress.iteration, step.total,
                objective_draws.select(step.local)), shard))
        self.progress.iteration += 1
        self.policy.update_old(old_policy_decay(int(train.old_policy_schedule), self.progress.optimizer_steps))
        return updates

    def update(self, batch: UpdateBatch, shard) -> dict:
        """One optimizer step on `batch` (this rank's rows of a step of `batch.rows` over all ranks):
        the objective's loss is formed and back-propagated part by part (gradient accumulation),
        so memory does not grow with the number of terms; then the gradients are summed over ranks.
        The step's numbers stay on the device until one read after the clip (one host sync per
        step); a non-finite loss stops the run there, before the optimizer spreads it into the weights."""
        self.optimizer.zero_grad(set_to_none=True)
        totals = StepTotals()
        for part in (self.objective.losses(batch) if len(batch.rollout.x0) else ()):
            part.loss.backward()
            self.progress.compute.add(part.cost)  # what the part says it spent
            totals.add(part)
        shard.sum_gradients(self.policy.parameters())  # (a rank without rows in this step adds zeros)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.train.max_grad_norm)
        stats = totals.read(grad_norm=grad_norm)  # the step's one host sync
        finite = math.isfinite(stats["loss"])
        if shard.agree(not finite):  # every rank stops, none waits in a later collective
            raise NonFiniteLoss(f"non-finite loss ({stats['loss']}) at iteration {self.progress.iteration + 1}"
                                if not finite else f"non-finite loss on another rank at iteration "
                                f"{self.progress.iteration + 1}")
        grad_norm = stats.pop("grad_norm")  # (of the gradients summed over ranks already)
        stats = {**shard.reduce(stats, maximum=StepTotals.MAXIMA), "grad_norm": grad_norm}
        self.optimizer.step()
        self.lr_schedule.step()
        self.progress.optimizer_steps += 1
        self.policy.update_ema(eval_ema_decay(self.progress.optimizer_steps, self.cfg.eval.ema_cap)
                                if self.cfg.eval.ema else 0.0)
        return stats

    # ------------------------------------------------------------------------- measurement
    def run_eval(self, view: str, moment: str | None = None) -> dict:
        """A held-out evaluation of the policy's `view`, logged, with its sample grid written as
        samples/iter<iteration>_nfe<forward + backward evaluations>.png; the first and the last
        (`moment` "before", "after") also as samples/before.png and samples/after.png."""
        with Phase(self.progress.compute, "eval"):
            metrics, (x0, cond) = evaluate(self.task, self.policy, view, self.protocol, self.device,
                                           self.teacher_cache, self.dist)
        record = self.progress.record_eval(metrics, self.cfg.report.get("threshold"))
        self.record.log("eval", record)
        self.record.samples(self.task, x0, cond, record, moment)
        return metrics

    # ------------------------------------------------------------------------------- state
    def save_checkpoint(self) -> None:
        self.checkpoint_iteration, self.checkpoint_time = self.progress.iteration, time.monotonic()
        self.checkpointer.save(self.progress)
        self.record.adapter(self.policy, self.measured, {"weights": eval_weights(self.cfg),
                                                          "iteration": self.progress.iteration})

    def write_summary(self, status: str, error: str | None = None) -> dict | None:
        return self.record.summary(status, self.progress, error=error, device=self.device,
                                   threshold=self.cfg.report.get("threshold"),
                                   eval_protocol=protocol_record(self.cfg, self.task),
                                   stopped_by_time=self.progress.stopped_by_time(self.cfg.train))
