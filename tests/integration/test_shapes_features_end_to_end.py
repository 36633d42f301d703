"""shapes' FID / KID: the shipped feature network (a render classifier) and the distances through
torchmetrics, checked against rlzoo's own Fréchet distance on the same features."""

import pytest
import torch

from rlzoo.tasks.shapes.features import CHECKPOINT


@pytest.mark.slow
def test_make_features_rebuilds_the_shipped_network(tmp_path):
    from rlzoo.tasks.shapes.features import main

    main(["--out", str(tmp_path / "features.pt")])
    rebuilt = torch.load(tmp_path / "features.pt", weights_only=True)["model"]
    shipped = torch.load(CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(rebuilt[k], shipped[k]) for k in shipped)
