"""An optimizer step reads its numbers from the device once.

A tensor-to-Python conversion (`float(t)`, `t.item()`, `t.tolist()`, `bool(t)`, ...) of a number
the device computed makes the host wait for the device: on a GPU, a stall per conversion. The
update keeps the step's loss, statistics and gradient norm on the device and reads them together
(rlzoo.types.StepTotals). This test counts, on CPU, every conversion rlzoo's own code makes while
`Trainer.update` runs, of any dtype, except in the places listed in HOST_TENSORS, whose tensors are
built on the CPU by design (row indices, the random permutation of shared draws); torch's own
optimizer code is not rlzoo's.
"""
from pathlib import Path

import pytest
import torch

CONVERSIONS = ("__float__", "__int__", "__bool__", "__index__", "item", "tolist")
RLZOO = str(Path(__file__).resolve().parents[2] / "rlzoo")
HOST_TENSORS = {  # (file, function): conversions there read tensors made on the CPU, never a device's
    ("types.py", "select"),  # a micro-batch's row index (torch.arange on the CPU) picks its prompts
    ("rng.py", "shared_randint"), ("rng.py", "shared_permutation"),  # draws of the CPU's shared generator
}


def count_device_reads(monkeypatch, trainer) -> tuple[list, list]:
    """Wrap trainer.update; return (steps, reads): each step's conversion sites."""
    import traceback

    steps, reads, inside = [], [], [False]
    for name in CONVERSIONS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if inside[0]:
                caller = traceback.extract_stack(limit=2)[0]
                where = caller.filename[len(RLZOO) + 1:]
                if caller.filename.startswith(RLZOO) and (where, caller.name) not in HOST_TENSORS:
                    reads[-1].append(f"{_name} at {where}:{caller.lineno}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    update = trainer.update

    def counted_update(batch, shard):
        reads.append([])
        inside[0] = True
        try:
            return update(batch, shard)
        finally:
            inside[0] = False
            steps.append(1)
    trainer.update = counted_update
    return steps, reads


@pytest.mark.parametrize("recipe", ["paper_a", "flowgrpo", "diffusionnft", "awm", "dmd"])
def test_an_optimizer_step_reads_the_device_once(recipe, tiny_trainer, monkeypatch):
    trainer = tiny_trainer(f"experiment={recipe}", "train.micro_batch_size=4", task="shapes")
    trainer.start()
    steps, reads = count_device_reads(monkeypatch, trainer)
    record = trainer.train_step()
    assert steps, "no optimizer step was taken"
    assert record["likelihood_terms"] >= 1 or recipe == "dmd"
    for step in reads:  # 4-row micro-batches: several loss parts per step, each with its statistics
        assert len(step) == 1, f"{recipe}: {len(step)} host reads in one optimizer step: {step}"
