"""Reward components beyond the verifier: the remote reward against stub servers on 127.0.0.1,
the mix, and the tiny image reward models."""
import json
import time
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from common import counting_handler
from omegaconf import OmegaConf

from rlzoo.config import CONF_DIR, ConfigError, build, compose_config, validate
from rlzoo.rewards import MixReward, Reward, normalized
from rlzoo.rewards.remote import RemoteReward, RemoteRewardError
from rlzoo.types import Conditioning


def cond_of(prompts, groups=None):
    ids = torch.arange(len(prompts))
    return Conditioning(list(prompts), {}, ids, ids if groups is None else torch.tensor(groups))


def test_remote_reward_scores_what_the_server_answers(server):
    seen = {}

    def scorer(images, prompts, metadata):
        seen.update(shapes=[i.shape for i in images], prompts=prompts, metadata=metadata)
        return [float(i[..., 0].mean()) / 255 for i in images], {"green": [float(i[..., 1].mean()) / 255 for i in images]}

    reward = RemoteReward(url=server(scorer), batch_size=2)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = reward.score_images(images, cond_of(["a", "b", "c"]))
    pixels = (images * 255).round() / 255  # what travelled: uint8 PNGs
    assert torch.allclose(out["reward"], pixels[:, 0].mean((1, 2)), atol=1e-6)
    assert torch.allclose(out["green"], pixels[:, 1].mean((1, 2)), atol=1e-6)
    assert seen["prompts"] == ["c"] and seen["shapes"] == [(8, 8, 3)] and seen["metadata"] == [{}]  # last batch


class Slow(BaseHTTPRequestHandler):
    def do_POST(self):
        time.sleep(1.5)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass





def test_remote_reward_times_out_with_bounded_retries(server):
    reward = RemoteReward(url=server(handler=Slow), timeout=0.2, retries=1, backoff=0.01)
    start = time.perf_counter()
    with pytest.raises(RemoteRewardError, match=r"failed after 2 tries: no answer within 0.2s"):
        reward.score(torch.rand(1, 3, 4, 4), ["a"])
    assert time.perf_counter() - start < 1.2  # two timeouts of 0.2 s, not a hang


def test_remote_reward_retries_server_errors_then_stops(server):
    calls = []
    reward = RemoteReward(url=server(handler=counting_handler(503, b"busy", calls)), retries=2, backoff=0.01)
    with pytest.raises(RemoteRewardError, match="failed after 3 tries: HTTP 503"):
        reward.score(torch.rand(2, 3, 4, 4), ["a", "b"])
    assert len(calls) == 3


@pytest.mark.parametrize("body, message", [
    (b"<html>not json</html>", "not JSON"),
    (json.dumps({"scores": [1.0]}).encode(), "without 2 finite 'scores'"),
    (json.dumps({"scores": [1.0, float("nan")]}).encode(), "without 2 finite 'scores'"),
    (json.dumps({"result": 1}).encode(), "without 2 finite 'scores'"),
])
def test_remote_reward_garbage_is_a_clear_error_without_retries(server, body, message):
    calls = []
    reward = RemoteReward(url=server(handler=counting_handler(200, body, calls)), retries=3, backoff=0.01)
    with pytest.raises(RemoteRewardError, match=message) as info:
        reward.score(torch.rand(2, 3, 4, 4), ["a", "b"])
    assert "reward.url=http://127.0.0.1:" in str(info.value) and len(calls) == 1


def test_refused_connection_is_retried_then_reported():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = RemoteReward(url=f"http://127.0.0.1:{port}/", retries=1, backoff=0.01, timeout=1)
    with pytest.raises(RemoteRewardError, match="failed after 2 tries"):
        reward.score(torch.rand(1, 3, 4, 4), ["a"])


def test_remote_without_url_is_one_line_before_any_model():
    with pytest.raises(ConfigError, match=r"reward.url is not set"):
        validate(compose_config(["task=t2i", "model=sd3_tiny", "reward=remote", "debug=tiny"]))


def test_normalized_within_groups_in_float64():
    r = torch.tensor([1.0, 3.0, 10.0, 30.0, 50.0], dtype=torch.float64)
    g = torch.tensor([0, 0, 1, 1, 1])
    out = normalized(r, g, "group", eps=0.0)
    assert torch.allclose(out[:2], torch.tensor([-1.0, 1.0], dtype=torch.float64), atol=1e-12)
    third = torch.tensor([10.0, 30.0, 50.0], dtype=torch.float64)
    assert torch.allclose(out[2:], (third - 30) / third.std(unbiased=False), atol=1e-12)
    assert torch.allclose(normalized(r, g, "batch", eps=0.0), (r - r.mean()) / r.std(unbiased=False), atol=1e-12)


class Constant(Reward):
    def __init__(self, values):
        self.values = torch.tensor(values)

    def score_images(self, images, cond, task=None):
        return {"reward": self.values}

    def check(self):
        pass


def constant_mix(normalize, a, b, weights=(0.25, 2.0)):
    mix = MixReward.__new__(MixReward)
    mix.parts = {"a": Constant(a), "b": Constant(b)}
    mix.weights, mix.normalize, mix.momentum, mix.running = dict(zip("ab", weights)), normalize, 0.5, {}
    return mix


def test_mix_is_the_weighted_sum_of_group_normalised_rewards():
    mix = constant_mix("group", [1.0, 2.0, 3.0, 5.0], [100.0, 100.0, 0.0, 400.0])
    cond = cond_of(["p", "p", "q", "q"], groups=[0, 0, 1, 1])
    out = mix.score_images(torch.zeros(4, 3, 2, 2), cond)
    expected = 0.25 * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + 2.0 * torch.tensor([0.0, 0.0, -1.0, 1.0])
    assert torch.allclose(out["reward"], expected, atol=1e-5)
    assert torch.equal(out["b"], mix.parts["b"].values)
    # the adaptive weights: w / (the group's std + eps) on each raw reward (group 0 of b: std 0)
    assert torch.allclose(out["weight_a"], torch.tensor([0.5, 0.5, 0.25, 0.25]), rtol=1e-5)
    assert torch.allclose(out["weight_b"][2:], torch.tensor([0.01, 0.01]), rtol=1e-5)
    assert torch.allclose(out["weight_b"][:2], torch.full((2,), 2.0 / 1e-6), rtol=1e-5)


def test_mix_with_running_statistics_follows_an_ema_and_resumes():
    """normalize=running: m, s from an EMA (momentum 0.5 here) of each reward's batch mean and
    second moment; the first batch starts the EMA; the statistics are part of the reward's state."""
    mix = constant_mix("running", [0.0, 2.0, 4.0, 6.0], [1.0, 1.0, 3.0, 3.0], weights=(1.0, 0.0))
    cond = cond_of(["p", "p", "q", "q"], groups=[0, 0, 1, 1])
    first = mix.score_images(torch.zeros(4, 3, 2, 2), cond)
    a = torch.tensor([0.0, 2.0, 4.0, 6.0])
    assert torch.allclose(first["weight_a"], torch.full((4,), 1 / (a.var(unbiased=False).sqrt() + 1e-6)))
    assert torch.allclose(first["reward"], (a - a.mean()) / (a.var(unbiased=False).sqrt() + 1e-6))
    state = mix.state_dict()
    mix.parts["a"].values = a + 10
    second = mix.score_images(torch.zeros(4, 3, 2, 2), cond)
    m1, m2 = 0.5 * (a.mean() + (a + 10).mean()), 0.5 * (a.square().mean() + (a + 10).square().mean())
    assert torch.allclose(second["reward"], (a + 10 - m1) / ((m2 - m1**2).sqrt() + 1e-6), atol=1e-5)
    fresh = constant_mix("running", (a + 10).tolist(), [1.0, 1.0, 3.0, 3.0], weights=(1.0, 0.0))
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.score_images(torch.zeros(4, 3, 2, 2), cond)["reward"], second["reward"])


def test_mix_yaml_builds_tiny_parts_and_rejects_mismatched_weights():
    mix = build(compose_config(["task=t2i", "model=sd3_tiny", "reward=mix", "reward.tiny=true"]).reward)
    assert all(part.tiny for part in mix.parts.values())
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = mix.score_images(images, cond_of(["a cat", "a cat", "a dog", "a dog"], [0, 0, 1, 1]))
    assert set(out) == {"reward", "pickscore", "clip_score", "weight_pickscore", "weight_clip_score"}
    assert out["reward"].shape == (4,)
    with pytest.raises(ValueError, match=r"reward.weights names \['x'\] differ"):
        MixReward(rewards={"a": {"_target_": "rlzoo.rewards.VerifierReward"}}, weights={"x": 1.0})


@pytest.mark.parametrize("name", ["clip_score", "hpsv2", "aesthetic"])
def test_tiny_image_rewards_score_images(name):
    reward = build(OmegaConf.merge(OmegaConf.load(CONF_DIR / "reward" / f"{name}.yaml"), {"tiny": True}))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = reward.score(images, ["a cat", "a dog", "a red car"])
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert torch.equal(scores, reward.score(images, ["a cat", "a dog", "a red car"]))  # deterministic


def test_hpsv2_is_the_plain_cosine():
    reward = build(OmegaConf.merge(OmegaConf.load(CONF_DIR / "reward" / "hpsv2.yaml"), {"tiny": True}))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    scores = reward.score(images, ["a cat", "two dogs"])
    assert scores.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("name", ["pickscore", "clip_score", "hpsv2", "aesthetic"])
def test_missing_reward_weights_are_one_line_before_any_model(name):
    with pytest.raises(ConfigError, match=r"reward.path is not set; download the .* weights") as info:
        validate(compose_config(["task=t2i", "model=sd3_tiny", f"reward={name}", "debug=tiny"]))
    assert "\n" not in str(info.value)


def test_the_wsgi_app_speaks_the_same_protocol():
    """rlzoo.rewards.server.wsgi_app under a standard WSGI server (the stdlib's wsgiref here; gunicorn
    in production) answers the remote reward as the reference server does, and refuses a body
    over its limit with 413 and a non-POST with 405."""
    import json
    import threading
    import urllib.error
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from rlzoo.rewards.server import wsgi_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    def scorer(images, prompts, metadata):
        return [float(i[..., 0].mean()) / 255 for i in images], {"n": [len(prompts)] * len(images)}

    httpd = make_server("127.0.0.1", 0, wsgi_app(scorer, max_body_bytes=200_000), handler_class=Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    try:
        reward = RemoteReward(url=url, batch_size=2)
        images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        out = reward.score_images(images, cond_of(["a", "b", "c"]))
        assert torch.allclose(out["reward"], ((images * 255).round() / 255)[:, 0].mean((1, 2)), atol=1e-6)
        assert out["n"].tolist() == [2, 2, 1]
        for request, status in ((urllib.request.Request(url, data=b"x" * 300_000, method="POST"), 413),
                                (urllib.request.Request(url), 405)):
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(request, timeout=10)
            assert error.value.code == status and "error" in json.loads(error.value.read())
    finally:
        httpd.shutdown()


@pytest.mark.parametrize("overrides", [["reward=pickscore", "reward.tiny=true"],
                                       ["reward=clip_score", "reward.tiny=true"],
                                       ["+task.eval_rewards.clip={_target_: rlzoo.rewards.images.CLIPReward, tiny: true}"]])
def test_an_image_reward_on_a_task_without_images_is_one_line(overrides):
    with pytest.raises(ConfigError, match=r"scores images, and task=toy2d makes none.*task=shapes and task=t2i"):
        validate(compose_config(["task=toy2d", *overrides]))


@pytest.mark.parametrize("task,name", [("shapes", "strict"), ("shapes", "iteration"), ("toy2d", "sw_data"),
                                       ("toy2d", "teacher_x")])
def test_an_evaluation_reward_may_not_take_a_name_the_evaluation_reports(task, name):
    """(`iteration` used to overwrite eval.jsonl's iteration; toy2d's sw_data hid the reward)"""
    with pytest.raises(ConfigError, match=rf"task.eval_rewards.{name}: the evaluation already reports"):
        validate(compose_config([f"task={task}", f"+task.eval_rewards.{name}=${{reward}}"]))
