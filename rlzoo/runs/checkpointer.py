"""A run's checkpoint (README, Runs): every stateful part of the run in one file that loads with
`weights_only=True`, written atomically by rank 0, and checked against the run's config and model
before anything of the run is restored or touched."""
from __future__ import annotations

from pathlib import Path

from rlzoo.errors import CheckpointError
from rlzoo.runs.files import atomic_torch_save, checkpoint_path, load_checkpoint
from rlzoo.runs.progress import Progress


class Learners:
    """The run's learners as one checkpointed part: {learner name: its state}."""

    def __init__(self, learners: list):
        self.learners = learners

    def state_dict(self) -> dict:
        return {learner.name: learner.state_dict() for learner in self.learners}

    def load_state_dict(self, state: dict) -> None:
        for learner in self.learners:
            learner.load_state_dict(state[learner.name])


def upgrade(state: dict) -> dict:
    """A checkpoint written before the run's randomness was one object (rlzoo.rng.Randomness),
    read into today's places: its streams were the run's `generator` and the reward's (or a mix
    part's), DMD's and each learner's own `generator`; a part it did not save starts empty."""
    if "rng" in state or "generator" not in state:
        return state
    reward, objective = state.get("reward") or {}, state.get("objective") or {}
    streams = {"run": state["generator"]}
    for part in [reward, *(reward.get("parts") or {}).values()]:
        if isinstance(part, dict) and "generator" in part:
            streams.setdefault("reward", part["generator"])
    if "generator" in objective:
        streams["objective"] = objective["generator"]
    for name, learner in (state.get("learners") or {}).items():
        if isinstance(learner, dict) and "generator" in learner:
            streams[name] = learner["generator"]
    return {**state, "rng": streams, "reward": reward, "objective": objective}


class Checkpointer:
    """Saves and restores `parts` ({name: an object with state_dict / load_state_dict}: the policy,
    optimizer, schedule, reward, learners, objective, randomness) with the run's progress and the
    config record (`fingerprint`, rlzoo.config.run_fingerprint) that a resume must match."""

    def __init__(self, run_dir: Path, parts: dict, fingerprint: dict, writes: bool = True):
        self.run_dir, self.parts, self.fingerprint, self.writes = Path(run_dir), parts, fingerprint, writes

    @property
    def path(self) -> Path:
        return checkpoint_path(self.run_dir)

    def save(self, progress: Progress) -> None:
        """Tensors and plain values only (rank 0 writes; `writes` is False on the others)."""
        if self.writes:
            atomic_torch_save({"progress": progress.state_dict(), "run": self.fingerprint,
                               **{name: part.state_dict() for name, part in self.parts.items()}}, self.path)

    def load(self, device) -> tuple[Progress, dict | None]:
        """Every part restored from the checkpoint; the progress and the config it records. A
        checkpoint that cannot be read, was written by a run with another config, or does not fit
        this model is a one-line CheckpointError (a part that does not fit is found as it loads:
        the run is then not started, and nothing of it is written)."""
        from rlzoo.config import config_differences

        path = self.path
        state = upgrade(load_checkpoint(path, map_location=device))
        differs = config_differences(state.get("run"), self.fingerprint)
        if differs:
            raise CheckpointError(f"checkpoint {path} was written by a run with another config (differs in "
                                  f"{', '.join(differs[:5])}); it was left in place: choose another run_dir=...")
        try:
            progress = Progress.from_state_dict(state["progress"])
            for name, part in self.parts.items():
                part.load_state_dict(state[name])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split())[:160]
            raise CheckpointError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: {reason}); "
                                  f"it was left in place: choose another run_dir=..., or move the checkpoint "
                                  f"away to start this run afresh") from None
        return progress, state.get("run")
