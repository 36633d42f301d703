"""Where a run's random numbers come from (`train.rng`).

Samplers, estimators and the trainer draw through a `Draws`: random tensors whose first dimension
is the rows of a batch (`randn`, `rand`), a view of some of those rows (`select`, a micro-batch),
and one generator for what all rows share (`shared`: the window of a mixed sampler, the steps a
trajectory estimator trains, the minibatch shuffle).

- `stream` (the default): the loop's numbers come from the run's generator, in the order the code
  asks, and those of each consumer that draws apart (R_dm, the critic, DMD) from a stream of its
  own that starts at the run's seed (`Randomness`), as they always have; committed results
  reproduce bit for bit. A row's numbers depend on which rows were drawn before it, so they
  change with the batch's split across processes.
- `keyed`: each row has its own generator, seeded by (seed, iteration, purpose, row), and the
  shared draws by (seed, iteration, purpose). A row gets the same numbers however the batch is cut
  into micro-batches or spread over ranks, so a data-parallel run equals a single-process one up
  to float reduction order, and a checkpoint resumes on any number of processes. Keys are rows,
  not prompt groups, because torch draws a tensor of 16 or more normals on the CPU with another
  algorithm than a shorter one: drawing a group's rows in two micro-batches would not give the
  numbers of one draw.
"""
from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

RNG_MODES = ("stream", "keyed")


@runtime_checkable
class Draws(Protocol):
    keyed: bool  # each row draws from its own generator (train.rng=keyed)

    def randn(self, shape, dtype: torch.dtype | None = None) -> Tensor: ...

    def rand(self, shape, dtype: torch.dtype | None = None) -> Tensor: ...

    def select(self, index: Tensor) -> "Draws": ...

    @property
    def shared(self) -> torch.Generator | None: ...


class StreamDraws:
    """Every draw from one generator (None: torch's global one), whatever the rows."""

    keyed = False

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator

    def randn(self, shape, dtype=None) -> Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=dtype)

    def rand(self, shape, dtype=None) -> Tensor:
        return torch.rand(tuple(shape), generator=self.generator, dtype=dtype)

    def select(self, index: Tensor) -> "StreamDraws":
        return self

    @property
    def shared(self) -> torch.Generator | None:
        return self.generator


def key_seed(*key) -> int:
    """A 63-bit seed from a key (seed, iteration, purpose, row): stable across processes and runs
    (Python's hash() of a string is not)."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class KeyedDraws:
    """Row r of this batch draws from the generator keyed (seed, iteration, purpose, rows[r]);
    successive draws of a row continue its generator (kept in `streams`, shared by selections)."""

    keyed = True

    def __init__(self, seed: int, iteration: int, purpose: str, rows: Tensor, streams: dict | None = None):
        self.key = (int(seed), int(iteration), purpose)
        self.rows = [int(r) for r in rows]
        self.streams = {} if streams is None else streams

    def _generator(self, row) -> torch.Generator:
        if row not in self.streams:
            self.streams[row] = torch.Generator().manual_seed(key_seed(*self.key, row))
        return self.streams[row]

    def _per_row(self, draw, shape, dtype) -> Tensor:
        shape = tuple(shape)
        if shape[0] != len(self.rows):
            raise ValueError(f"a draw of {shape[0]} rows from keyed draws over {len(self.rows)} rows")
        if not self.rows:
            return torch.empty(shape, dtype=dtype)
        return torch.stack([draw(shape[1:], generator=self._generator(row), dtype=dtype) for row in self.rows])

    def randn(self, shape, dtype=None) -> Tensor:
        return self._per_row(torch.randn, shape, dtype)

    def rand(self, shape, dtype=None) -> Tensor:
        return self._per_row(torch.rand, shape, dtype)

    def select(self, index: Tensor) -> "KeyedDraws":
        chosen = KeyedDraws(*self.key[:2], self.key[2], torch.tensor([self.rows[int(i)] for i in index]),
                            self.streams)
        return chosen

    @property
    def shared(self) -> torch.Generator:
        return self._generator("shared")


class Randomness:
    """Every random number of a run, from its one seed (`seed`, `train.rng`): the one object the
    trainer asks, so no component seeds a generator of its own.

    `draws(purpose, iteration, rows)` are the numbers of one use in one iteration for `rows`
    (global row numbers). Keyed: keyed by (seed, iteration, purpose, row), whoever asks. Stream:
    the next numbers of the purpose's stream. The run's prompts, rollouts, updates and minibatch
    shuffles share one stream ("run"); each consumer named in `consumers` (the reward, a learner,
    the objective: what draws apart from the loop) has its own, which also starts from the run's
    seed, so that its numbers do not depend on how many the loop drew."""

    def __init__(self, seed: int, mode: str = "stream", consumers: tuple[str, ...] = ()):
        if mode not in RNG_MODES:
            raise ValueError(f"train.rng={mode!r}; valid: {', '.join(RNG_MODES)}")
        self.seed, self.keyed = int(seed), mode == "keyed"
        self.streams = {name: torch.Generator().manual_seed(self.seed) for name in ("run", *consumers)}

    def stream(self, name: str = "run") -> torch.Generator:
        """A stream's generator, for what every rank draws alike in either mode (the prompts)."""
        return self.streams[name]

    def draws(self, purpose: str, iteration: int, rows: Tensor) -> Draws:
        if self.keyed:
            return KeyedDraws(self.seed, iteration, purpose, rows)
        return StreamDraws(self.streams.get(purpose, self.streams["run"]))

    def state_dict(self) -> dict:
        return {name: generator.get_state() for name, generator in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        """The streams' states (a stream the state lacks never drew: it stays at the run's seed)."""
        if "run" not in state:
            raise KeyError("rng.run")
        for name, generator in self.streams.items():
            if name in state:
                generator.set_state(state[name].cpu())


def as_draws(draws: Draws | torch.Generator | None) -> Draws:
    """A component called with a plain generator (or none) draws from it as a stream."""
    if draws is None or isinstance(draws, torch.Generator):
        return StreamDraws(draws)
    return draws


def shared_randint(draws: Draws, high: int) -> int:
    """One integer in [0, high) from the draws' shared generator (the same on every rank), as a
    Python int: a host draw, so reading it never waits for a device."""
    return int(torch.randint(high, (), generator=draws.shared))


def shared_permutation(draws: Draws, n: int) -> list[int]:
    """A random permutation of range(n) from the draws' shared generator, as Python ints (a host draw)."""
    return torch.randperm(n, generator=draws.shared).tolist()
