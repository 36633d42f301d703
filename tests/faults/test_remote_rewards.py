"""The fault suite, area 5: remote rewards are bounded (client deadline, response cap, retries; the reference server's limits).
Each case asserts its outcome (one line, the exit code) and that no file that existed before
changed (tests/README.md lists the areas)."""
import base64
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from common import ENV, one_line


def handler(answer, calls: list | None = None):
    """A handler that reads the request and runs `answer(self)`."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if calls is not None:
                calls.append(1)
            try:
                answer(self)
            except OSError:
                pass

        def log_message(self, *args):
            pass
    return Handler


def reply(status: int, body: bytes, length: int | None = None):
    def answer(h):
        h.send_response(status)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        h.wfile.write(body)
    return answer


def score(url, **kwargs):
    from rlzoo.rewards.remote import RemoteReward

    return RemoteReward(url=url, **{"timeout": 0.5, "retries": 1, "backoff": 0.01, **kwargs}).score(
        torch.rand(2, 3, 4, 4), ["a", "b"])


def test_a_trickling_server_is_cut_off_at_the_request_deadline(server):
    from rlzoo.rewards.remote import RemoteRewardError

    def trickle(h):
        body = json.dumps({"scores": [0.5, 0.5]}).encode()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for byte in body:  # each read gets a byte well within any per-read timeout
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.1)

    url = server(handler=handler(trickle))
    start = time.perf_counter()
    with pytest.raises(RemoteRewardError, match="within 0.5s") as info:
        score(url)
    assert time.perf_counter() - start < 2.0 and url in str(info.value)  # 2 tries x 0.5 s, not 25 x 0.1 s each


def test_a_connection_dropped_mid_answer_names_the_url_and_is_retried(server):
    from rlzoo.rewards.remote import RemoteRewardError

    calls = []

    def drop(h):
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        h.wfile.write(b'{"scores": [0.')
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)

    url = server(handler=handler(drop, calls))
    with pytest.raises(RemoteRewardError, match="dropped mid-answer") as info:
        score(url, retries=2)
    assert url in str(info.value) and len(calls) == 3


@pytest.mark.parametrize("declared", [True, False])
def test_an_oversized_answer_is_refused_not_read(server, declared):
    from rlzoo.rewards.remote import RemoteRewardError

    calls = []

    def big(h):
        h.send_response(200)
        if declared:
            h.send_header("Content-Length", str(10**9))
        h.end_headers()
        h.wfile.write(b"x" * 50_000)

    url = server(handler=handler(big, calls))
    with pytest.raises(RemoteRewardError, match="max_response_bytes") as info:
        score(url, max_response_bytes=10_000, retries=3)
    assert url in str(info.value) and len(calls) == 1


@pytest.mark.parametrize("body, message", [
    (b'{"scores": [0.5, 0.5], "info": {"x": 5}}', "'info' must map names to lists of 2 finite numbers"),
    (b'{"scores": [0.5, 0.5], "info": {"x": ["a", "b"]}}', "'info' must map names"),
    (b'{"scores": [0.5, 1' + b"0" * 400 + b']}', "without 2 finite 'scores'"),
    (b"[" * 100_000, "not JSON"),
])
def test_a_malformed_answer_is_one_error_naming_the_url(server, body, message):
    from rlzoo.rewards.remote import RemoteRewardError

    url = server(handler=handler(reply(200, body)))
    with pytest.raises(RemoteRewardError, match=message) as info:
        score(url)
    assert url in str(info.value)


def test_a_redirect_is_not_followed(server):
    from rlzoo.rewards.remote import RemoteRewardError

    def redirect(h):
        h.send_response(302)
        h.send_header("Location", "http://example.com/")
        h.send_header("Content-Length", "0")
        h.end_headers()

    with pytest.raises(RemoteRewardError, match="HTTP 302.*redirect"):
        score(server(handler=handler(redirect)))


def test_a_server_that_trickles_its_headers_is_cut_off_too(server):
    from rlzoo.rewards.remote import RemoteRewardError

    def slow_headers(h):
        for line in (b"HTTP/1.0 200 OK\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n", b"\r\n{}"):
            h.wfile.write(line)
            h.wfile.flush()
            time.sleep(0.3)

    start = time.perf_counter()
    with pytest.raises(RemoteRewardError, match="within 0.5s"):
        score(server(handler=handler(slow_headers)))
    assert time.perf_counter() - start < 2.0


def test_a_4xx_is_not_retried_and_carries_the_server_reason(server):
    from rlzoo.rewards.remote import RemoteRewardError

    calls = []
    url = server(handler=handler(reply(413, json.dumps({"error": "the body is too large"}).encode()), calls))
    with pytest.raises(RemoteRewardError, match="HTTP 413.*the body is too large"):
        score(url, retries=3)
    assert len(calls) == 1


def test_a_429_is_retried_with_backoff(server):
    from rlzoo.rewards.remote import RemoteRewardError

    calls = []
    url = server(handler=handler(reply(429, b"{}"), calls))
    with pytest.raises(RemoteRewardError, match="failed after 3 tries: HTTP 429"):
        score(url, retries=2)
    assert len(calls) == 3


def test_a_server_that_recovers_is_used(server):
    calls = []

    def flaky(h):
        if len(calls) <= 2:
            h.connection.shutdown(socket.SHUT_RDWR)  # reset before any answer
            return
        reply(200, json.dumps({"scores": [0.25, 0.75]}).encode())(h)

    url = server(handler=handler(flaky, calls))
    assert score(url, retries=2).tolist() == [0.25, 0.75] and len(calls) == 3


@pytest.mark.parametrize("override, message", [
    ("reward.timeout=inf", "reward.timeout=inf is not a finite number"),
    ("reward.timeout=0", "reward.timeout must be a finite number > 0"),
    ("reward.backoff=-1", "reward.backoff must be a finite number >= 0"),
    ("reward.max_response_bytes=0", "reward.max_response_bytes must be an int >= 1"),
    ("reward.url=ftp://x/", "is not an http(s) URL"),
])
def test_remote_reward_settings_are_validated(override, message):
    from rlzoo.config import ConfigError, compose_config, validate

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_config(["task=t2i", "model=sd3_tiny", "reward=remote", "reward.url=http://127.0.0.1:1/",
                                 "debug=tiny", override]), check_model=False)


@pytest.fixture
def reference():
    """The reference reward server with small limits, on a free port: (port, scorer calls)."""
    from rlzoo.rewards.server import Limits, serve

    calls = []

    def scorer(images, prompts, metadata):
        calls.append(len(images))
        if prompts and prompts[0] == "explode":
            raise RuntimeError("secret internal detail")
        if prompts and prompts[0] == "slow":
            time.sleep(0.3)
        return [1.0] * len(images)

    server = serve(scorer, port=0, limits=Limits(max_body_bytes=200_000, max_pixels=64 * 64,
                                                 max_request_pixels=3 * 64 * 64, timeout=0.5, workers=1))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1], calls
    server.shutdown()
    server.server_close()


def raw_request(port: int, data: bytes) -> tuple[bytes, float]:
    """Send raw bytes; (the whole answer, seconds until the server answered or closed)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.perf_counter() - start


def post(body: bytes, length: int | None = None) -> bytes:
    return b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body


def png(width: int, height: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def bomb_png(side: int) -> str:
    """A PNG whose header says side x side pixels, with a tiny payload: decoding it would take
    3·side² bytes (12000²: 432 MB), checking its header takes nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    raw += chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + raw).decode()


def test_the_server_refuses_an_oversized_body_without_reading_it(reference):
    port, calls = reference
    answer, seconds = raw_request(port, post(b"", length=10**9))
    assert answer.startswith(b"HTTP/1.0 413") and b"limit of 200,000" in answer and calls == []


@pytest.mark.parametrize("side", [12000, 20000])  # 20000²: beyond Pillow's own refusal too
def test_the_server_refuses_a_decompression_bomb_from_its_header(reference, side):
    port, calls = reference
    body = json.dumps({"prompts": ["a"], "images": [bomb_png(side)]}).encode()
    answer, seconds = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 413") and b"pixels" in answer and calls == [] and seconds < 2


def test_the_server_refuses_a_request_over_its_total_pixel_limit(reference):
    """Many small files that each pass, but decode to too much together."""
    port, calls = reference
    body = json.dumps({"prompts": ["a"] * 4, "images": [png(60, 60)] * 4}).encode()
    answer, _ = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 413") and b"in all" in answer and calls == []


def test_the_server_refuses_a_json_nesting_bomb(reference):
    port, calls = reference
    answer, _ = raw_request(port, post(b"[" * 100_000))
    assert answer.startswith(b"HTTP/1.0 400") and calls == []


def test_the_server_refuses_an_image_over_its_pixel_limit(reference):
    port, calls = reference
    body = json.dumps({"prompts": ["a"], "images": [png(65, 65)]}).encode()
    answer, _ = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 413") and b"65x65" in answer and calls == []


@pytest.mark.parametrize("data", [
    b"",                                                    # connects and says nothing
    b"POST / HTTP/1.1\r\nContent-Le",                       # half-sent headers
    b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pr",  # half-sent body
])
def test_the_server_closes_idle_and_half_sent_connections(reference, data):
    port, calls = reference
    answer, seconds = raw_request(port, data)
    assert answer == b"" and 0.3 < seconds < 3 and calls == []


@pytest.mark.parametrize("body, status, message", [
    (b"not json", 400, b"not JSON"),
    (json.dumps({"prompts": "a", "images": []}).encode(), 400, b"'prompts' must be a list"),
    (json.dumps({"prompts": ["a"], "images": []}).encode(), 400, b"one image per prompt"),
    (json.dumps({"prompts": ["a"], "images": ["%%%"]}).encode(), 400, b"not a base64-encoded image"),
    (json.dumps({"prompts": ["a"], "images": [png(4, 4)], "metadata": [1]}).encode(), 400, b"'metadata' must be"),
])
def test_the_server_answers_a_bad_request_with_a_4xx_that_says_why(reference, body, status, message):
    port, calls = reference
    answer, _ = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 %d" % status) and message in answer and calls == []
    assert b"Traceback" not in answer and b"File \"" not in answer


def test_the_server_requires_a_content_length(reference):
    port, _ = reference
    answer, _ = raw_request(port, b"POST / HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 411")


def test_a_failing_scorer_is_a_500_that_does_not_echo_internals(reference):
    port, calls = reference
    body = json.dumps({"prompts": ["explode"], "images": [png(4, 4)]}).encode()
    answer, _ = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 500") and b"secret internal detail" not in answer and calls == [1]


def test_the_server_handles_at_most_its_workers_at_once(reference):
    port, calls = reference
    body = json.dumps({"prompts": ["slow"], "images": [png(4, 4)]}).encode()
    answers = []

    def client():
        answers.append(raw_request(port, post(body))[0])

    threads = [threading.Thread(target=client) for _ in range(3)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.startswith(b"HTTP/1.0 200") for a in answers) and len(calls) == 3
    assert time.perf_counter() - start >= 0.9  # three 0.3 s scorings, one at a time (workers=1)


@pytest.mark.parametrize("argv, code, message", [
    (["--workers", "0"], 2, "--workers must be a finite number > 0"),
    (["--workers", "many"], 2, "invalid int value: 'many'"),
    (["--port", "99999"], 2, "--port must be in 0..65535"),
    (["--scorer", "nowhere_module:score"], 2, "cannot be imported"),
    (["--scorer", "rlzoo.rewards.server:nothing"], 2, "has no 'nothing'"),
])
def test_the_server_command_fails_in_one_line(capsys, argv, code, message):
    from rlzoo.rewards.server import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code and message in one_line(capsys.readouterr().err)


def test_the_server_command_names_a_taken_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "rlzoo.rewards.server", "--port", str(port)],
                             capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in one_line(out.stderr)
