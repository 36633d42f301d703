"""Reference server for `reward=remote`: run a scoring function in its own environment over HTTP.

    python -m rlzoo.rewards.server --scorer my_module:score --port 8000
    rlzoo-train ... reward=remote reward.url=http://127.0.0.1:8000/

This file needs only the standard library, numpy and Pillow, so it can be copied into another
environment (e.g. GenEval's, with its detector) and run there as `python server.py ...`.

A scorer is `score(images, prompts, metadata) -> scores` or `-> (scores, info)`: `images` a list of
HxWx3 uint8 arrays, `prompts` strings, `metadata` dicts (GenEval's tag/include/exclude when the prompt
set has them); `scores` one float per image; `info` {name: [one float per image]} logged next to the
reward. Protocol: rlzoo/rewards/remote.py.
"""
from __future__ import annotations

import argparse
import base64
import importlib
import io
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def brightness(images, prompts, metadata):
    """Example scorer: mean pixel value in [0, 1] (a protocol check, not a reward to train on)."""
    return [float(image.mean()) / 255.0 for image in images]


def _decode(text: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def make_handler(scorer: Callable) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                images = [_decode(i) for i in request["images"]]
                prompts = request["prompts"]
                metadata = request.get("metadata") or [{} for _ in prompts]
                result = scorer(images, prompts, metadata)
                scores, info = result if isinstance(result, tuple) else (result, {})
                body, status = json.dumps({"scores": [float(s) for s in scores], "info": info}).encode(), 200
            except Exception as exc:  # the client gets the reason, the server keeps serving
                body, status = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode(), 500
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # quiet: one line per request is noise in training logs
            pass

    return Handler


def serve(scorer: Callable, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server (not yet serving: call serve_forever, e.g. in a thread); port 0 picks a free one."""
    return ThreadingHTTPServer((host, port), make_handler(scorer))


def load_scorer(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", default=f"{__name__}:brightness", help="module:function")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    server = serve(load_scorer(args.scorer), args.host, args.port)
    print(f"reward server on http://{args.host}:{server.server_address[1]}/ scoring with {args.scorer}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
