"""shapes' FID / KID: the shipped feature network (a render classifier) and the distances through
torchmetrics, checked against rlzoo's own Fréchet distance on the same features."""
import random

import pytest
import torch

from rlzoo.tasks.shapes import ShapesTask, feature_distances, image_features
from rlzoo.tasks.shapes.features import CHECKPOINT, accuracy, labelled_renders, load_features


def test_the_shipped_feature_network_reads_renders():
    """The accuracy README states, on renders it never saw (another seed than training's)."""
    net = load_features()
    images, labels = labelled_renders(500, random.Random(12345))
    acc = accuracy(net, images, labels)
    assert acc["shape"] >= 0.99 and acc["colour"] >= 0.99
    stored = torch.load(CHECKPOINT, weights_only=True)["accuracy"]
    assert stored["image"] >= 0.99
    with torch.no_grad():  # features of order one (divided by their RMS on renders)
        rms = float(net(images).square().mean().sqrt())
    assert 0.5 < rms < 2.0


def test_fid_through_torchmetrics_is_the_frechet_distance_of_the_features():
    from rlzoo.distances import frechet_distance

    task = ShapesTask()
    ids = torch.tensor(task.eval_prompt_ids(384))
    data, again = task.sample_data(ids, seed=0), task.sample_data(ids, seed=1)
    blurred = torch.nn.functional.avg_pool2d(again, 3, stride=1, padding=1)
    net = load_features()
    with torch.no_grad():
        f_data, f_blur = (net(((x + 1) / 2).clamp(0, 1)).double() for x in (data, blurred))
    ours = feature_distances(image_features(blurred), image_features(data))
    assert ours["fid"] == pytest.approx(float(frechet_distance(f_blur, f_data)), rel=1e-3)
    same = feature_distances(image_features(again), image_features(data))  # the metric's floor
    assert same["fid"] < 0.35 * ours["fid"] and abs(same["kid"]) < 0.35 * ours["kid"]


def test_shapes_sample_metrics_report_fid_and_kid_to_data_and_teacher():
    task = ShapesTask()
    ids = torch.tensor(task.eval_prompt_ids(96))
    x0 = task.sample_data(ids, seed=3)
    metrics = task.sample_metrics(x0, ids, teacher=x0)
    assert set(metrics) == {"fid_data", "kid_data", "fid_teacher", "kid_teacher"}
    assert abs(metrics["fid_teacher"]) < 1e-6 and metrics["fid_data"] > 0
    assert task.sample_metrics(x0[:4], ids[:4]) == {}  # too few samples for a covariance
