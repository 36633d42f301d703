"""A reward computed by another process over HTTP (GenEval's detector lives in its own environment).

Protocol (JSON over HTTP POST, one request per batch of `batch_size` images):

    request:  {"prompts": [str], "images": [base64 PNG], "metadata": [dict]}
    response: {"scores": [float], "info": {name: [float]}}     # "info" optional, logged as reward/<name>
    errors:   a 4xx or 5xx status with {"error": str}

`metadata` is the prompt set's metadata of each prompt (for GenEval: tag, include, exclude), {}
where there is none. The reference server is `rlzoo/rewards/server.py`.

Every request is bounded: `timeout` seconds in all (connect, send, answer: a server that
trickles bytes is cut off at the deadline, not at each read's), at most `max_response_bytes` read
back. A timeout, a refused or dropped connection (also mid-answer) and a 5xx or 429 answer are
retried (`retries` times, `backoff` seconds doubling); a 4xx or a malformed answer is not. Every
failure is a `RemoteRewardError` of one line that names `reward.url`; it is raised before the
iteration's update, so the run's weights and files stay as they were.

Before any model is built, `check` sends the server one test request (one small gray image) and
refuses the run in one line when no valid answer comes back.

Secrets stay out of the run's files: `reward.url` may carry no credentials (user:password@, a
token in its query), since a run's config, its command line and its errors are written down; a
server that wants a token gets it from the environment variable `reward.token_env` names, as
`Authorization: Bearer <token>`, read when each request is sent.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import socket
import threading
import time
import urllib.parse

import torch
from torch import Tensor

from rlzoo.rewards.images import ImageReward, to_uint8_arrays
from rlzoo.types import Conditioning


class RemoteRewardError(RuntimeError):
    """The reward server did not give a usable answer."""


class _Transient(Exception):
    """A failure worth another try (a timeout, a dropped connection, a 5xx or 429)."""


def encode_png(array) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _finite(value, low: float, name: str, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        raise ValueError(f"reward.{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


class RemoteReward(ImageReward):
    name = "remote"

    def __init__(self, url: str | None = None, timeout: float = 60.0, retries: int = 2, backoff: float = 1.0,
                 batch_size: int = 64, max_response_bytes: int = 16 * 2**20, token_env: str | None = None):
        from rlzoo.errors import redact

        if not url:
            raise ValueError("reward.url is not set (the reward server's address, e.g. http://127.0.0.1:8000/)")
        if redact(str(url)) != str(url):
            raise ValueError(f"reward.url={redact(str(url))!r} carries credentials, which a run writes into its config, "
                             f"command line and logs; export the token in an environment variable and name it with "
                             f"reward.token_env=NAME (sent as 'Authorization: Bearer <token>')")
        parts = urllib.parse.urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"reward.url={url!r} is not an http(s) URL")
        if token_env is not None and not os.environ.get(str(token_env)):
            raise ValueError(f"reward.token_env={token_env!r}: that environment variable is not set (or empty); "
                             f"export {token_env}=<the server's token> first")
        self.token_env = None if token_env is None else str(token_env)
        for name, value in (("retries", retries), ("batch_size", batch_size), ("max_response_bytes", max_response_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "retries" else 1):
                raise ValueError(f"reward.{name} must be an int >= {0 if name == 'retries' else 1}, got {value!r}")
        self.url, self.timeout = str(url), _finite(timeout, 0, "timeout")
        self.backoff = _finite(backoff, 0, "backoff", strict=False)
        self.retries, self.batch_size, self.max_response_bytes = retries, batch_size, max_response_bytes

    def check(self) -> None:
        """One test request (a 64x64 gray image, a GenEval-style prompt) before any model is built:
        a server that is not up, or answers without a valid score, is a ValueError of one line
        naming reward.url. A URL that answered once is not asked again by this process."""
        if self.url in _ANSWERED:
            return
        import numpy as np

        gray, text = np.full((64, 64, 3), 128, dtype=np.uint8), "a photo of a cat"
        try:
            self.request({"prompts": [text], "images": [encode_png(gray)], "metadata": [
                {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": text}]}, 1)
        except RemoteRewardError as exc:
            raise ValueError(f"{exc} (a one-image test request, sent before any model is built); start the reward "
                             f"server or fix reward.url") from None
        _ANSWERED.add(self.url)

    def score_images(self, images: Tensor, cond: Conditioning, task=None) -> dict[str, Tensor]:
        prompts = list(cond.prompts)
        metadata = [task.metadata(p) if task is not None and hasattr(task, "metadata") else {} for p in prompts]
        arrays = to_uint8_arrays(images)
        scores, info = [], {}
        for start in range(0, len(prompts), self.batch_size):
            rows = slice(start, start + self.batch_size)
            answer = self.request({"prompts": prompts[rows], "metadata": metadata[rows],
                                   "images": [encode_png(a) for a in arrays[rows]]}, len(arrays[rows]))
            scores += answer["scores"]
            for key, values in answer.get("info", {}).items():
                info.setdefault(key, []).extend(values)
        out = {"reward": torch.tensor(scores, dtype=torch.float32)}
        out.update({k: torch.tensor(v, dtype=torch.float32) for k, v in info.items() if len(v) == len(scores)})
        return {k: v.to(images.device) for k, v in out.items()}

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        ids = torch.zeros(len(prompts), dtype=torch.long)
        return self.score_images(images, Conditioning(prompts, {}, ids, ids))["reward"]

    def request(self, payload: dict, expected: int) -> dict:
        """POST `payload`; the parsed, checked answer. Retries transient failures."""
        body = json.dumps(payload).encode()
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, reason, raw = self._post(body)
            except _Transient as exc:
                last = str(exc)
                continue
            if status >= 500 or status == 429:  # the server is busy or broken: it may recover
                last = f"HTTP {status} {reason}{_detail(raw)}"
                continue
            if status >= 400:  # the request itself is wrong: retrying will not help
                raise RemoteRewardError(f"reward.url={self.url} answered HTTP {status} {reason}{_detail(raw)}")
            if status >= 300:
                raise RemoteRewardError(f"reward.url={self.url} answered HTTP {status} {reason} (a redirect); "
                                        f"point reward.url at the reward server itself")
            return self.parse(raw, expected)
        raise RemoteRewardError(f"reward.url={self.url} failed after {self.retries + 1} tries: {last}")

    def _post(self, body: bytes) -> tuple[int, str, bytes]:
        """One POST within `timeout` seconds in all: (status, reason, body of at most
        `max_response_bytes`). A watchdog shuts the socket at the deadline, so no read can
        outlive it however slowly the server sends."""
        parts = urllib.parse.urlsplit(self.url)
        connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_type(parts.hostname or "", parts.port, timeout=self.timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        deadline = time.monotonic() + self.timeout
        opened: list = []  # the socket, once connected (http.client may drop its own reference to it)
        watchdog = threading.Timer(self.timeout, _shut, (opened,))
        watchdog.start()
        try:
            connection.connect()
            opened.append(connection.sock)
            try:
                connection.request("POST", path, body=body, headers=self._headers())
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped reading (a 413?): its answer, if it sent one, says why
            response = connection.getresponse()
            declared = response.getheader("Content-Length")
            if declared is not None and declared.isascii() and declared.isdigit() \
                    and int(declared) > self.max_response_bytes:
                raise RemoteRewardError(f"reward.url={self.url} answered {int(declared):,} bytes, more than "
                                        f"reward.max_response_bytes={self.max_response_bytes:,}")
            raw = _read_capped(response, self.max_response_bytes)
            if raw is None:
                raise RemoteRewardError(f"reward.url={self.url} answered more than "
                                        f"reward.max_response_bytes={self.max_response_bytes:,} bytes")
            if time.monotonic() >= deadline:  # the watchdog cut the answer short
                raise _Transient(f"no complete answer within {self.timeout:g}s")
            if response.length:  # Content-Length promised more than arrived
                raise _Transient(f"the connection dropped mid-answer ({len(raw):,} bytes of "
                                 f"{len(raw) + response.length:,})")
            return response.status, response.reason, raw
        except (TimeoutError, socket.timeout):
            raise _Transient(f"no answer within {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a malformed status or header
            if time.monotonic() >= deadline:
                raise _Transient(f"no answer within {self.timeout:g}s") from None
            if isinstance(exc, http.client.IncompleteRead):
                raise _Transient(f"the connection dropped mid-answer ({len(exc.partial):,} bytes read)") from None
            reason = getattr(exc, "reason", None) or exc
            raise _Transient(f"{type(exc).__name__}: {reason}" if str(reason) else type(exc).__name__) from None
        finally:
            watchdog.cancel()
            connection.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token_env is not None:  # read now: the token never sits in the config or the checkpoint
            headers["Authorization"] = f"Bearer {os.environ.get(self.token_env, '')}"
        return headers

    def parse(self, raw: bytes, expected: int) -> dict:
        """The answer's scores (`expected` finite numbers) and info ({name: `expected` finite
        numbers}), or a RemoteRewardError naming the URL and what is wrong with the answer."""
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RemoteRewardError(f"reward.url={self.url} answered something that is not JSON: "
                                    f"{raw[:80]!r}") from None
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not _numbers(scores, expected):
            raise RemoteRewardError(f"reward.url={self.url} answered without {expected} finite 'scores' "
                                    f"(got {str(answer)[:120]})")
        info = answer.get("info", {})
        if not isinstance(info, dict) or not all(isinstance(k, str) and _numbers(v, expected) for k, v in info.items()):
            raise RemoteRewardError(f"reward.url={self.url}: 'info' must map names to lists of {expected} finite "
                                    f"numbers (got {str(info)[:120]})")
        return {"scores": [float(s) for s in scores or ()], "info": {k: [float(x) for x in v] for k, v in info.items()}}


_ANSWERED: set[str] = set()  # URLs whose test request this process has seen answered


def _numbers(values, expected: int) -> bool:
    """A list of `expected` finite numbers (a huge JSON integer is not one)."""
    def finite(x) -> bool:
        try:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))
        except OverflowError:
            return False
    return isinstance(values, list) and len(values) == expected and all(finite(x) for x in values)


def _shut(opened: list) -> None:
    """The watchdog's deadline: shut the request's socket, so a blocked read returns at once."""
    for sock in opened:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_capped(response, cap: int) -> bytes | None:
    """The response body, or None when it is longer than `cap` bytes."""
    chunks, size = [], 0
    while True:
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)


def _detail(raw: bytes) -> str:
    """The server's own error message, if its answer carries one (shortened)."""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return ""
    return f": {' '.join(str(error).split())[:120]}" if error else ""
