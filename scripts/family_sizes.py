"""Each model family's full-size transformer counted on the meta device (no weights, no memory):
its parameters, the LoRA parameters its shipped targets add at the config's rank, and what LoRA
training holds before activations — the frozen base in bf16, and per LoRA parameter four fp32
adapters (current, old, ema, one more for Paper B's critic) plus the gradient and AdamW's two moments.

    python scripts/family_sizes.py > experiments/results/families/sizes.md
"""
import torch
from torch import nn

from rlzoo.config import compose_config
from rlzoo.tasks.base import instantiate_model

MODELS = {"SD3.5-Medium": "sd35m_random", "FLUX.1-dev": "flux_random", "Z-Image": "z_image_random"}
GIB = 2**30


def sizes(model: str) -> dict:
    cfg = compose_config(["task=t2i", f"model={model}"])
    family = instantiate_model(cfg.model)
    with torch.device("meta"):
        transformer = family.transformer_class().from_config(family.transformer_config())
    targets, rank = list(cfg.model.lora.target_modules), int(cfg.model.lora.rank)
    lora = sum(rank * (m.in_features + m.out_features) for name, m in transformer.named_modules()
               if isinstance(m, nn.Linear) and any(name.endswith(t) for t in targets))
    base = sum(p.numel() for p in transformer.parameters())
    held = base * 2 + lora * 4 * (4 + 1 + 2)  # bf16 base; fp32 adapters x4, their gradient, AdamW's moments
    return {"base": base, "lora": lora, "rank": rank, "held": held}


def main() -> None:
    print("| family | transformer parameters | LoRA parameters (rank) | held before activations (GiB) |")
    print("|---|---|---|---|")
    for name, model in MODELS.items():
        s = sizes(model)
        print(f"| {name} (`model={model}`) | {s['base'] / 1e9:.2f} B | {s['lora'] / 1e6:.1f} M (r {s['rank']}) "
              f"| {s['held'] / GIB:.1f} |")


if __name__ == "__main__":
    main()
