"""The typed boundaries between components (README, Architecture).

Shapes: B = batch, K = sampler steps, `...` = the task's sample shape ((2,) for toy2d,
(C, H, W) for images).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor

from rlzoo.rng import Draws


@dataclass(frozen=True)
class Cost:
    """Model evaluations spent, summed over rows: forward and backward (the unit of every budget
    and table). Each component that evaluates a model reports one: the sampler for its rollout
    (guidance included), the estimator per likelihood term, a learner per update, a reward per call."""

    nfe_forward: int = 0
    nfe_backward: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.nfe_forward + other.nfe_forward, self.nfe_backward + other.nfe_backward)


@dataclass
class Conditioning:
    """What the velocity model is conditioned on, for a batch of B samples.

    `inputs` holds the model's own conditioning tensors (token ids, angles, prompt embeddings),
    each with a leading batch dimension, so any micro-batch can be cut out with `select`.

    Classifier-free guidance: with `guidance_scale` s > 1, `negative` holds the same keys for the
    empty (negative) prompt and the policy's velocity is v_u + s·(v_c − v_u) (`rlzoo.policies`),
    which costs two model evaluations (`evaluations_per_velocity`).
    """

    prompts: list[str]
    inputs: dict[str, Tensor]
    prompt_ids: Tensor  # (B,) index of the prompt in the task's prompt list
    group_ids: Tensor  # (B,) samples that share a prompt share a group id
    negative: dict[str, Tensor] | None = None  # the empty prompt's inputs, batch-aligned with `inputs`
    guidance_scale: float = 1.0

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    @property
    def evaluations_per_velocity(self) -> int:
        return 2 if self.guided else 1

    def select(self, index: Tensor) -> "Conditioning":
        index = index.to(torch.long)
        picked = index.tolist()

        def rows(inputs):
            return None if inputs is None else {k: v[index.to(v.device)] for k, v in inputs.items()}

        return replace(self, prompts=[self.prompts[i] for i in picked], inputs=rows(self.inputs),
                       prompt_ids=self.prompt_ids[index], group_ids=self.group_ids[index],
                       negative=rows(self.negative))

    def to(self, device: torch.device | str) -> "Conditioning":
        def moved(inputs):
            return None if inputs is None else {k: v.to(device) for k, v in inputs.items()}

        return replace(self, inputs=moved(self.inputs), negative=moved(self.negative))

    def with_guidance(self, scale: float, negative: dict[str, Tensor] | None) -> "Conditioning":
        """This conditioning guided with scale s (1 = unguided; then `negative` may be None)."""
        if scale != 1.0 and negative is None:
            raise ValueError("classifier-free guidance needs the negative prompt's inputs")
        return replace(self, negative=negative if scale != 1.0 else None, guidance_scale=float(scale))


class Declared:
    """A record whose optional fields (None by default) its producer declares in `provides`."""

    def needed(self, *names: str) -> tuple[Any, ...]:
        """The optional fields `names`, which the caller declared in `needs` (the validator checked
        that its provider fills them): a None among them is a provider that broke its declaration."""
        values = tuple(getattr(self, name) for name in names)
        missing = [name for name, value in zip(names, values) if value is None]
        if missing:
            raise RuntimeError(f"{type(self).__name__} has no {', '.join(missing)}, which its provider declares")
        return values


@dataclass
class Rollout(Declared):
    """What a sampler returns."""

    x0: Tensor  # (B, ...) final samples
    cond: Conditioning
    sigmas: Tensor  # (K+1,) the schedule actually used, sigmas[0] = 1, sigmas[-1] = 0
    nfe: int  # model evaluations per sample (unguided): the sampler's steps, DPM2S's 2K - 1
    cost: Cost = Cost()  # what the rollout spent, summed over rows, guidance included
    trajectory: Tensor | None = None  # (B, K+1, ...) where an estimator needs it
    log_probs: Tensor | None = None  # (B, K) behaviour log-probs of stochastic steps
    stochastic: Tensor | None = None  # (K,) bool, which steps were stochastic
    # the sampler's transition kernel at step k: transition(x_k, velocity, k, x_next=...) -> Step
    # with mean, std, kernel_std and the log-prob of x_next (stochastic samplers only)
    transition: Callable | None = None
    # the schedule and the stochastic steps as Python numbers, read once when the rollout is made (the
    # sampler's tensors are host tensors), so an update never converts a tensor to learn them
    sigma_values: tuple[float, ...] = ()
    stochastic_steps: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.sigma_values:
            self.sigma_values = tuple(self.sigmas.tolist())
        if self.stochastic is not None and not self.stochastic_steps:
            self.stochastic_steps = tuple(torch.nonzero(self.stochastic).flatten().tolist())

    def select(self, index: Tensor) -> "Rollout":
        """The rows `index` of this rollout (a minibatch for one optimizer step)."""
        index = index.to(torch.long)
        rows = index.to(self.x0.device)
        return replace(self, x0=self.x0[rows], cond=self.cond.select(index),
                       trajectory=None if self.trajectory is None else self.trajectory[rows],
                       log_probs=None if self.log_probs is None else self.log_probs[rows])


@dataclass
class LikelihoodTerm(Declared):
    """One term of a likelihood estimate (one timestep of the ELBO, one step of a trajectory),
    for a micro-batch of b rows.

    `log_lik` carries gradients to the current policy; the `*_old` / `*_ref` fields do not. The
    optional fields are what objectives and KLs may need; each estimator declares which it fills
    (`provides`), each consumer which it reads (`needs`), and the validator checks the pair.
    """

    index: Tensor  # (b,) which rows of the rollout this micro-batch holds
    log_lik: Tensor  # (b,) current policy
    log_lik_old: Tensor  # (b,) behaviour policy, same noise and x_t
    weight: float  # this term's share of the full estimate (terms of one sample sum to 1)
    nfe_forward: int  # model evaluations (forward, per row, summed over rows) spent on this term
    nfe_backward: int  # differentiable current-model evaluations back-propagated, summed over rows
    # final-sample estimators: the forward-noised sample and the velocities there
    velocity: Tensor | None = None  # (b, ...) current policy at x_t
    velocity_old: Tensor | None = None  # old policy at the same x_t
    velocity_ref: Tensor | None = None  # reference at the same x_t
    x_t: Tensor | None = None
    x0: Tensor | None = None
    noise: Tensor | None = None
    t: Tensor | None = None  # (b,)
    # trajectory estimators: the Gaussian transition x_k -> x_{k+1}
    mean: Tensor | None = None  # (b, ...) current policy's transition mean
    mean_ref: Tensor | None = None  # reference's transition mean
    std: Tensor | float | None = None  # the step's std
    kernel_std: Tensor | float | None = None  # the kernel's std before the sqrt(-dt) factor

    @property
    def cost(self) -> Cost:
        return Cost(self.nfe_forward, self.nfe_backward)


@dataclass
class LossPart:
    """One backward of an optimizer step: a share of the step's loss (the shares sum to it), what
    computing it cost, and its statistics (summed over parts; `log_ratio_abs_max` is a max)."""

    loss: Tensor  # scalar
    cost: Cost
    stats: dict = field(default_factory=dict)  # numbers, or 0-dim tensors left on the device (StepTotals reads them)


class StepTotals:
    """An optimizer step's statistics, summed over its loss parts where they are computed (on the
    device, in float64: the same sums as Python's floats, bit for bit) and read to the host once,
    by `read`, so a step waits for the device once rather than once per number per part."""

    MAXIMA = ("log_ratio_abs_max", "likelihood_terms")  # over ranks; the first also over parts

    def __init__(self):
        self.values: dict = {"loss": 0.0, "kl": 0.0, "log_ratio_abs_max": 0.0, "ratio_mean": 0.0,
                             "likelihood_terms": 0}

    def add(self, part: LossPart) -> None:
        self.values["loss"] = self.values["loss"] + part.loss.detach().double()
        for key, value in part.stats.items():
            if isinstance(value, Tensor):
                value = value.detach().double()
            total = self.values.get(key, 0)
            if key != "log_ratio_abs_max":
                self.values[key] = total + value
            elif isinstance(value, Tensor):  # (clamp_min takes the first part's Python 0.0 with no copy to the device)
                self.values[key] = torch.maximum(total, value) if isinstance(total, Tensor) else value.clamp_min(total)
            else:
                self.values[key] = max(total, value)

    def read(self, **more) -> dict:
        """The totals (and `more`) as Python numbers: one host sync for all the tensors among them."""
        values = {**self.values, **more}
        tensors = [key for key, value in values.items() if isinstance(value, Tensor)]
        if tensors:
            device = values[tensors[0]].device
            read = torch.stack([values[key].detach().to(device, torch.float64) for key in tensors]).tolist()
            values.update(zip(tensors, read))
        return values


@dataclass
class UpdateBatch:
    """What an objective's loss for one optimizer step is computed from (`Objective.losses`)."""

    policy: PolicyProtocol  # rlzoo.policies.Policy or LoraPolicy
    rollout: Rollout
    advantage: Tensor  # (B,)
    estimator: EstimatorProtocol
    kl: KLProtocol
    task: TaskProtocol
    micro_batch_size: int
    draws: Draws  # over the rollout's rows: the estimator's noise and timesteps (rlzoo.rng)
    iteration: int  # iterations done before this one (DMDR's warm-up counts them)
    rows: int | None = None  # the step's rows over all ranks, the loss's denominator (None: the rollout's)
    objective_draws: Draws | None = None  # what the objective draws itself (DMD's step, noise, t; the trainer passes it)


@dataclass(frozen=True)
class RunContext:
    """The run a component checks itself against before any model is built: a component with a
    `check_run(run)` method raises ValueError (one line: the bad value, what would fit) when it
    cannot take part in this run; rlzoo.config.validate calls every such method. Its fields are the
    run's other choices that components' rules read."""

    sampler_steps: int  # steps of the rollout sampler's schedule
    group_size: int  # samples per prompt (train.group_size)
    world: int = 1  # processes under torchrun (1: one process)
    task: str = "?"  # the task's name, for messages
    task_supports_guidance: bool = False  # the task has an empty prompt (classifier-free guidance)
    names: dict = field(default_factory=dict)  # config group -> the chosen component's name, for messages
    choices: dict = field(default_factory=dict)  # config group -> the names it offers, for messages
    old_policy_schedule: float = 1  # train.old_policy_schedule (0: the old policy is the current one)
    updates_per_rollout: int = 1  # train.inner_epochs × train.minibatches
    pretrained_teacher: bool = True  # model.teacher: the base model has trained weights to distil from
    model: str = "?"  # the model's class, for messages


# The optional fields of a LikelihoodTerm: the vocabulary of `needs` / `provides` declarations
# (the validator refuses a declaration outside it, e.g. a misspelt field).
TERM_FIELDS = frozenset(f.name for f in fields(LikelihoodTerm) if f.default is None)


# ---------------------------------------------------------------- what each component family provides
# The interfaces the trainer relies on, one per config group. A component need not subclass
# rlzoo's base classes: anything with these members plugs in (tests/integration/test_configs_end_to_end.py checks that
# every shipped choice does).

@runtime_checkable
class SelfChecking(Protocol):
    """A component with rules against the rest of the run (rlzoo.config.validate calls each)."""

    def check_run(self, run: RunContext) -> None: ...


@runtime_checkable
class PolicyProtocol(Protocol):
    """The policy the trainer, estimators and objectives use (rlzoo.policies: module copies or LoRA
    adapters on one base): velocities of its views ("current", "old", "reference", "ema",
    "critic"), its trainable parameters, the old policy's and the evaluation EMA's updates."""

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning, which: str = "current") -> Tensor: ...

    def velocity_fn(self, which: str) -> Callable[[Tensor, Tensor, Conditioning], Tensor]: ...

    def module(self, which: str) -> torch.nn.Module: ...

    def parameters(self) -> list: ...

    def train(self) -> None: ...

    def update_old(self, decay: float) -> None: ...

    def update_ema(self, decay: float) -> None: ...

    def add_critic(self) -> list: ...

    def export_adapter(self, view: str, out, metadata: dict) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class SamplerProtocol(Protocol):
    num_steps: int
    shift: float
    cfg_scale: float  # guidance of the rollouts (1 = none)
    needs: frozenset
    provides: frozenset  # "trajectory", "differentiable_sample"

    def sample(self, velocity_fn: Callable, noise: Tensor, cond: Conditioning, record: bool = False,
               generator: Draws | torch.Generator | None = None) -> Rollout: ...


@runtime_checkable
class EstimatorProtocol(Protocol):
    needs: frozenset  # from the sampler
    provides: frozenset  # LikelihoodTerm fields

    def terms(self, policy, rollout: Rollout, micro_batch_size: int, need_reference: bool = False,
              generator: Draws | torch.Generator | None = None) -> Iterator[LikelihoodTerm]: ...


@runtime_checkable
class ObjectiveProtocol(Protocol):
    uses_ratio: bool
    needs: frozenset  # LikelihoodTerm fields
    sampler_needs: frozenset
    needs_critic: bool
    clip_range: float | None

    def losses(self, batch: UpdateBatch) -> Iterator[LossPart]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class AdvantageProtocol(Protocol):
    min_group_size: int

    def __call__(self, rewards: Tensor, group_ids: Tensor) -> Tensor: ...


@runtime_checkable
class KLProtocol(Protocol):
    beta: float
    needs: frozenset
    needs_reference: bool

    def __call__(self, term: LikelihoodTerm) -> Tensor | None: ...


@runtime_checkable
class RewardProtocol(Protocol):
    scores_images: bool
    needs_images: bool  # it, or a part of it, scores pictures
    needs_critic: bool
    takes_draws: bool  # called with draws= (rlzoo.rewards.score)
    headline: bool  # its held-out mean can head a run's evaluation

    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]: ...

    def check(self) -> None: ...

    def cost(self, rows: int) -> Cost: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class TaskProtocol(Protocol):
    name: str
    sample_shape: tuple
    supports_guidance: bool  # it has an empty prompt: classifier-free guidance works
    makes_images: bool  # images(x0) gives pictures: image rewards apply
    has_verifier: bool  # its own rule-based score (toy2d, shapes)
    headline_reward: object  # the run's own training reward, measured held-out (or None)
    extra_eval_rewards: dict  # task.eval_rewards beside a verifier

    def train_prompts(self) -> list[str]: ...

    def heldout_prompts(self) -> list[str]: ...

    def sample_train_prompts(self, n: int, generator: torch.Generator) -> list[int]: ...

    def group_conditioning(self, prompt_ids: list[int], group_size: int) -> Conditioning: ...

    def guided(self, cond: Conditioning, scale: float) -> Conditioning: ...

    def score(self, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]: ...

    def load_base_model(self, model_cfg) -> torch.nn.Module: ...

    def conditioning(self, prompts: list[str], prompt_ids: Tensor, group_ids: Tensor) -> Conditioning: ...

    def eval_prompt_ids(self, num_samples: int) -> list[int]: ...

    def summarize(self, scores: dict[str, Tensor], prompt_ids: Tensor) -> dict[str, float]: ...

    def sample_metrics(self, x0: Tensor, prompt_ids: Tensor, teacher: Tensor | None = None) -> dict[str, float]: ...

    def save_grid(self, x0: Tensor, cond: Conditioning, path) -> None: ...

    def images(self, x0: Tensor) -> Tensor: ...


@runtime_checkable
class LearnerProtocol(Protocol):
    name: str

    def attach(self, policy) -> None: ...

    def update(self, rollout: Rollout, draws, shard) -> Cost:
        """Learn from this rank's rows of the iteration's rollout, drawing from `draws` (rlzoo.rng,
        the run's numbers for these rows); `shard` (rlzoo.distributed.Shard) reduces over ranks.
        Returns the model evaluations spent."""
        ...

    def metrics(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Components:
    """Everything the trainer is built from, one field per config group (README, Components).

    `optimizer` and `lr_schedule` are factories (Hydra partials): the optimizer is built on the
    policy's trainable parameters, the schedule on the optimizer."""

    task: TaskProtocol
    sampler: SamplerProtocol
    estimator: EstimatorProtocol
    objective: ObjectiveProtocol
    advantage: AdvantageProtocol
    kl: KLProtocol
    reward: RewardProtocol
    optimizer: Callable
    lr_schedule: Callable
    loggers: list = field(default_factory=list)  # beyond metrics.jsonl / eval.jsonl (e.g. wandb)
    # what learns beside the policy, once per iteration on its rollout (DMD's critic)
    learners: list[LearnerProtocol] = field(default_factory=list)
