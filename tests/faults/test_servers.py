"""The fault suite, continued (README, Reliability, Stable Diffusion 3.5's reward servers): the
reference reward server under connection pressure, the WSGI app's bad bodies, a remote reward
checked before any model, and secrets that stay out of messages and run files."""
import io
import json
import os
import socket
import stat
import subprocess
import threading
import time

import pytest
from common import BIN, ENV, one_line, tiny, train_here

from rlzoo.config import ConfigError, compose_config, validate
from rlzoo.errors import redact


@pytest.fixture
def busy():
    """The reference server with 2 scoring workers and a scorer that takes 50 ms: (port, calls)."""
    from rlzoo.rewards.server import Limits, serve

    calls = []

    def scorer(images, prompts, metadata):
        calls.append(len(images))
        time.sleep(0.05)
        return [0.5] * len(images)

    server = serve(scorer, port=0, limits=Limits(workers=2, timeout=5.0))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1], calls
    server.shutdown()
    server.server_close()


def request(port: int, timeout: float = 20) -> bytes:
    body = json.dumps({"prompts": [], "images": []}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------- the reference server under pressure
def test_far_more_clients_than_workers_are_all_answered(busy):
    """40 clients at once against 2 workers: none is reset (the listen queue used to hold 5)."""
    port, calls = busy
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(request(port))) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 40 and all(a.startswith(b"HTTP/1.0 200") for a in answers) and len(calls) == 40


def test_idle_connections_do_not_stall_the_server(busy):
    """Clients that connect and send nothing hold a connection thread until the request timeout,
    never a scoring worker: a real request beside them is answered at once."""
    port, _ = busy
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]  # twice the workers
    try:
        start = time.perf_counter()
        assert request(port).startswith(b"HTTP/1.0 200")
        assert time.perf_counter() - start < 2.0  # (the idle ones are cut off only after 5 s)
    finally:
        for s in idle:
            s.close()


@pytest.mark.parametrize("argv, message", [(["--connections", "0"], "--connections must be a finite number > 0"),
                                           (["--backlog", "-1"], "--backlog must be a finite number > 0")])
def test_the_server_command_refuses_bad_connection_settings(argv, message):
    out = subprocess.run([str(BIN / "python"), "-m", "rlzoo.rewards.server", *argv], capture_output=True,
                         text=True, env=ENV, timeout=60)
    assert out.returncode == 2 and message in one_line(out.stderr)


def test_the_wsgi_app_answers_a_short_body_with_a_400():
    from rlzoo.rewards.server import wsgi_app

    statuses = []
    environ = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "100", "wsgi.input": io.BytesIO(b'{"prompts": []')}
    body = b"".join(wsgi_app()(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["400 Bad Request"]
    assert json.loads(body) == {"error": "the body is shorter than its Content-Length"}


# ------------------------------------------------------------------ a remote reward is checked before compute
def remote(url, *more):
    return tiny("reward=remote", f"reward.url='{url}'", "reward.retries=0", *more, task="shapes")


def test_a_reward_server_that_is_not_up_is_found_before_any_model(capsys, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = train_here(capsys, *remote(f"http://127.0.0.1:{port}/"), f"run_dir={tmp_path / 'run'}")
    line = one_line(out.stderr)
    assert out.returncode == 2 and f"reward.url=http://127.0.0.1:{port}/" in line and "test request" in line
    assert "Connection" in line and not (tmp_path / "run").exists()


def test_a_reward_server_that_answers_is_checked_once(server):
    calls = []

    def scorer(images, prompts, metadata):
        calls.append((images[0].shape, prompts, metadata))
        return [0.1]
    url = server(scorer)
    validate(compose_config(remote(url)))
    validate(compose_config(remote(url)))  # (a process asks each URL once: a single run validates twice)
    assert calls == [((64, 64, 3), ["a photo of a cat"],
                      [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}])]


def test_a_reward_server_that_answers_garbage_is_refused_before_any_model(server):
    from http.server import BaseHTTPRequestHandler

    class Garbage(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"garbage")

        def log_message(self, *args):
            pass
    with pytest.raises(ConfigError, match="answered something that is not JSON.*test request"):
        validate(compose_config(remote(server(handler=Garbage))))


# ----------------------------------------------------------------------------------------- secrets
@pytest.mark.parametrize("url", ["http://user:hunter2@127.0.0.1:9/", "https://127.0.0.1:9/score?token=hunter2",
                                 "http://127.0.0.1:9/?model=x&api_key=hunter2"])
def test_credentials_in_the_url_are_refused_without_being_printed(capsys, tmp_path, url):
    out = train_here(capsys, *remote(url), f"run_dir={tmp_path / 'run'}")
    line = one_line(out.stderr)
    assert out.returncode == 2 and "carries credentials" in line and "reward.token_env" in line
    assert "hunter2" not in out.stderr + out.stdout and "***" in line
    assert not (tmp_path / "run").exists()


def test_redact_hides_every_credential_and_nothing_else():
    assert redact("see http://u:p@h:1/x?token=abc&batch=4 and https://h/?sig=s") == (
        "see http://***@h:1/x?token=***&batch=4 and https://h/?sig=***")
    assert redact("reward.url=http://127.0.0.1:8000/ timeout after 3 s") == "reward.url=http://127.0.0.1:8000/ timeout after 3 s"


def test_a_token_comes_from_the_environment_variable_token_env_names(server, monkeypatch):
    from http.server import BaseHTTPRequestHandler

    seen = []

    class Records(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            body = b'{"scores": [0.5]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    url = server(handler=Records)
    with pytest.raises(ConfigError, match="reward.token_env='RLZOO_TEST_TOKEN': that environment variable is not set"):
        validate(compose_config(remote(url, "reward.token_env=RLZOO_TEST_TOKEN")))
    monkeypatch.setenv("RLZOO_TEST_TOKEN", "s3cret")
    cfg = compose_config(remote(url, "reward.token_env=RLZOO_TEST_TOKEN"))
    validate(cfg)
    assert seen == ["Bearer s3cret"] and "s3cret" not in json.dumps(__import__("omegaconf").OmegaConf.to_container(cfg))


def test_the_files_that_record_a_run_s_config_are_not_world_readable(here, tmp_path):
    run = tmp_path / "run"
    assert here(run).returncode == 0
    private = [run / "config.yaml", run / ".rlzoo.lock", run / "checkpoints" / "last.pt",
               *sorted((run / ".hydra").iterdir())]
    assert len(private) == 6
    for path in private:
        assert not os.stat(path).st_mode & stat.S_IROTH, path
