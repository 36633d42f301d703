"""The `paper_a` and `flowgrpo` recipes as bare loops in plain torch, for `make bench` to measure
what rlzoo's structure costs (rlzoo.commands.bench compares them iteration by iteration).

Nothing here imports rlzoo. The caller hands over what is not training code: the network (a
velocity model `model(x, sigma, cond)`), the conditioning of the iteration's prompts and the
reward function. Everything a trainer does is written out straight: the rollout sampler, the
reward call, the advantages, the likelihood terms, the losses, the optimizer step and the EMA
views, with the same model passes, batch sizes and settings as the recipe on `shapes`:

- paper_a: 10-step DPM-Solver++(2M) rollouts with the old policy; exact advantage c·(R − group
  mean); one optimizer step over 9 ELBO terms per sample (adaptive weighting, the old model on the
  same x_t), EPG loss, velocity KL to the reference; AdamW, gradient clip 5; evaluation EMA and
  old-policy EMA (schedule 1).
- flowgrpo: 10-step FlowGRPO SDE rollouts (η 0.7) recording log-probs; group advantage with the
  batch's std; two optimizer steps on shuffled halves of the groups, each over the 9 trained steps:
  PPO-clip (1e-4, advantages clipped to ±5) plus β·SDE-mean KL with FlowGRPO's normaliser; AdamW,
  gradient clip 1; evaluation EMA; the old policy is the current one (schedule 0).
"""
from __future__ import annotations

import copy
import math
import time

import torch


def flow_sigmas(steps: int) -> torch.Tensor:
    """diffusers' FlowMatchEulerDiscreteScheduler at shift 1: linspace(1, 1/1000, K), then 0."""
    return torch.cat([torch.linspace(1.0, 1 / 1000, steps), torch.zeros(1)])


def mean_d(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


class BareLoop:
    """The current weights and three frozen copies (the behaviour policy, the evaluation EMA, the
    reference), as rlzoo's full fine-tuning policy holds them."""

    def __init__(self, model: torch.nn.Module, lr: float, betas, weight_decay: float):
        self.current = model
        self.old, self.ema, self.reference = (copy.deepcopy(model).requires_grad_(False) for _ in range(3))
        self.optimizer = torch.optim.AdamW(self.current.parameters(), lr=lr, betas=tuple(betas),
                                           weight_decay=weight_decay)
        self.steps = 0

    @torch.no_grad()
    def _ema(self, target, decay: float) -> None:
        for t, s in zip(target.parameters(), self.current.parameters()):
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)

    def _step(self, max_grad_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.current.parameters(), max_grad_norm)
        self.optimizer.step()
        self.steps += 1
        self._ema(self.ema, min((1 + self.steps) / (10 + self.steps), 0.9))

    # ----------------------------------------------------------------------------- paper_a
    def paper_a(self, cond, groups: torch.Tensor, reward_fn, shape, generator, steps: int = 10,
                beta: float = 0.01, alpha: float = 0.1) -> dict:
        """One iteration; seconds per phase."""
        times, start = {}, time.perf_counter()
        sigmas, rows = flow_sigmas(steps), groups.shape[0]
        with torch.no_grad():  # DPM-Solver++(2M): one evaluation per step, first order first and last
            x = torch.randn((rows, *shape), generator=generator)
            previous = None

            def lam(sig):  # log-SNR of the flow: log((1 - sigma) / sigma)
                return math.log((1 - sig) / sig) if sig < 1 else -math.inf

            for k in range(steps):
                s, s_next = float(sigmas[k]), float(sigmas[k + 1])
                x0 = x - s * self.old(x, sigmas[k].expand(rows), cond)
                if s_next == 0:
                    x = x0
                else:
                    h = lam(s_next) - lam(s)
                    d = x0
                    if previous is not None and math.isfinite(lam(previous[1])):
                        r = (lam(s) - lam(previous[1])) / h
                        d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous[0]
                    x = s_next / s * x - (1 - s_next) * math.expm1(-h) * d
                previous = (x0, s)
        times["rollout"] = time.perf_counter() - start

        start = time.perf_counter()
        reward = reward_fn(x)
        means = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, reward) / torch.bincount(groups)
        advantage = beta / alpha * (reward - means[groups])
        times["reward"] = time.perf_counter() - start

        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        terms = int(0.99 * steps)
        order = torch.argsort(torch.rand(rows, steps, generator=generator), dim=1)[:, :terms]
        timesteps = sigmas[:-1][order]
        for j in range(terms):
            t = timesteps[:, j].view(-1, 1, 1, 1)
            noise = torch.randn(x.shape, generator=generator)
            x_t = (1 - t) * x + t * noise
            with torch.no_grad():
                v_old = self.old(x_t, t.flatten(), cond)
                v_ref = self.reference(x_t, t.flatten(), cond)
            v = self.current(x_t, t.flatten(), cond)

            def elbo(velocity):
                error = x_t - t * velocity - x
                return -mean_d(error**2) / mean_d(error.detach().abs()).clamp_min(1e-5)

            f, o = elbo(v), elbo(v_old).detach()
            loss = -torch.exp(f.detach() - o) * advantage * f + beta * mean_d((v - v_ref) ** 2)
            (loss.sum() / rows / terms).backward()
        self._step(max_grad_norm=5.0)
        self._ema(self.old, min(0.001 * self.steps, 0.5))
        times["train"] = time.perf_counter() - start
        return times

    # ----------------------------------------------------------------------------- flowgrpo
    def flowgrpo(self, cond, groups: torch.Tensor, reward_fn, shape, generator, steps: int = 10,
                 eta: float = 0.7, beta: float = 0.04, clip: float = 1e-4, minibatches: int = 2) -> dict:
        times, start = {}, time.perf_counter()
        sigmas, rows = flow_sigmas(steps), groups.shape[0]

        def kernel(x, v, k):
            s, s_next = float(sigmas[k]), float(sigmas[k + 1])
            std_dev = eta * math.sqrt(s / (1 - (float(sigmas[1]) if s == 1 else s)))
            dt = s_next - s
            mean = x * (1 + std_dev**2 / (2 * s) * dt) + v * (1 + std_dev**2 * (1 - s) / (2 * s)) * dt
            return mean, std_dev * math.sqrt(-dt), std_dev

        def log_prob(x_next, mean, std):
            return mean_d(-((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi))

        with torch.no_grad():
            x = torch.randn((rows, *shape), generator=generator)
            path, log_probs = [x], []
            for k in range(steps):
                mean, std, _ = kernel(x, self.old(x, sigmas[k].expand(rows), cond), k)
                x = mean + std * torch.randn(x.shape, generator=generator)
                path.append(x)
                log_probs.append(log_prob(x, mean, std))
        times["rollout"] = time.perf_counter() - start

        start = time.perf_counter()
        reward = reward_fn(x)
        means = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, reward) / torch.bincount(groups)
        advantage = ((reward - means[groups]) / (reward.std(unbiased=False) + 1e-4)).clamp(-5, 5)
        times["reward"] = time.perf_counter() - start

        start = time.perf_counter()
        trained = range(int(0.99 * steps))
        group_size = rows // (int(groups.max()) + 1)
        shuffled = torch.randperm(int(groups.max()) + 1, generator=generator)
        for part in shuffled.chunk(minibatches):
            index = (part.sort().values[:, None] * group_size + torch.arange(group_size)).flatten()
            self.optimizer.zero_grad(set_to_none=True)
            sub = cond.select(index)
            for k in trained:
                x_k, x_next = path[k][index], path[k + 1][index]
                sigma = sigmas[k].expand(len(index))
                with torch.no_grad():
                    mean_ref, _, _ = kernel(x_k, self.reference(x_k, sigma, sub), k)
                mean, std, std_dev = kernel(x_k, self.current(x_k, sigma, sub), k)
                ratio = torch.exp(log_prob(x_next, mean, std) - log_probs[k][index])
                a = advantage[index]
                loss = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip))
                loss = loss + beta * mean_d((mean - mean_ref) ** 2) / (2 * std_dev**2)
                (loss.sum() / len(index) / len(trained)).backward()
            self._step(max_grad_norm=1.0)
        self.old.load_state_dict(self.current.state_dict())  # schedule 0: the old policy is the current one
        times["train"] = time.perf_counter() - start
        return times
