"""A reward computed by another process over HTTP (GenEval's detector lives in its own environment).

Protocol (JSON over HTTP POST, one request per batch of `batch_size` images):

    request:  {"prompts": [str], "images": [base64 PNG], "metadata": [dict]}
    response: {"scores": [float], "info": {name: [float]}}     # "info" optional, logged as reward/<name>

`metadata` is the prompt set's metadata of each prompt (for GenEval: tag, include, exclude), {}
where there is none. A reference server is `scripts/reward_server.py`. A request that times out, a
connection refused or a 5xx answer is retried (`retries` times, `backoff` seconds doubling); a
malformed answer is not. Either way the error is one line naming `reward.url` and what happened;
it is raised before the iteration's update, so the run's weights and files stay as they were.
"""
from __future__ import annotations

import base64
import io
import json
import math
import time
import urllib.error
import urllib.request

import torch
from torch import Tensor

from rlzoo.rewards.images import ImageReward, to_uint8_arrays
from rlzoo.types import Conditioning


class RemoteRewardError(RuntimeError):
    """The reward server did not give a usable answer."""


def encode_png(array) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class RemoteRewardError(RuntimeError):
    """The reward server did not give a usable answer."""


def encode_png(array) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str):
    """base64 PNG -> HxWx3 uint8 array (what a server does with a request's images)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


class RemoteReward(ImageReward):
    name = "remote"

    def __init__(self, url: str | None = None, timeout: float = 60.0, retries: int = 2, backoff: float = 1.0,
                 batch_size: int = 64):
        if not url:
            raise ValueError("reward.url is not set (the reward server's address, e.g. http://127.0.0.1:8000/)")
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"reward.url={url!r} is not an http(s) URL")
        if float(timeout) <= 0 or int(retries) < 0 or int(batch_size) < 1:
            raise ValueError(f"reward=remote needs timeout > 0, retries >= 0, batch_size >= 1; got "
                             f"timeout={timeout!r}, retries={retries!r}, batch_size={batch_size!r}")
        self.url, self.timeout, self.retries = str(url), float(timeout), int(retries)
        self.backoff, self.batch_size = float(backoff), int(batch_size)

    def score_images(self, images: Tensor, cond: Conditioning, task=None) -> dict[str, Tensor]:
        prompts = list(cond.prompts)
        metadata = [task.metadata(p) if hasattr(task, "metadata") else {} for p in prompts]
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
                request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} {exc.reason}"
                if exc.code < 500:  # the request itself is wrong: retrying will not help
                    raise RemoteRewardError(f"reward.url={self.url} answered {last}") from None
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"no answer within {self.timeout:g}s" if "timed out" in str(reason) else f"{reason}"
        else:
            raise RemoteRewardError(f"reward.url={self.url} failed after {self.retries + 1} tries: {last}")
        return self.parse(raw, expected)

    def parse(self, raw: bytes, expected: int) -> dict:
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RemoteRewardError(f"reward.url={self.url} answered something that is not JSON: "
                                    f"{raw[:80]!r}") from None
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if (not isinstance(scores, list) or len(scores) != expected
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores)):
            raise RemoteRewardError(f"reward.url={self.url} answered without {expected} finite 'scores' "
                                    f"(got {str(answer)[:120]})")
        info = answer.get("info", {})
        if not isinstance(info, dict):
            raise RemoteRewardError(f"reward.url={self.url}: 'info' must map names to lists of numbers")
        return {"scores": [float(s) for s in scores], "info": info}
