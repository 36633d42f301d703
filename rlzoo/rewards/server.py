"""Reference server for `reward=remote`: run a scoring function in its own environment over HTTP.

    python -m rlzoo.rewards.server --scorer my_module:score --port 8000
    rlzoo-train ... reward=remote reward.url=http://127.0.0.1:8000/

or, with one worker process per GPU under a production WSGI server (`wsgi_app`):

    gunicorn -w 8 -b 127.0.0.1:8000 'rlzoo.rewards.server:wsgi_app("my_module:score")'

This file needs only the standard library, numpy and Pillow, so it can be copied into another
environment (e.g. GenEval's, with its detector) and run there as `python server.py ...`.

A scorer is `score(images, prompts, metadata) -> scores` or `-> (scores, info)`: `images` a list of
HxWx3 uint8 arrays, `prompts` strings, `metadata` dicts (GenEval's tag/include/exclude when the prompt
set has them); `scores` one float per image; `info` {name: [one float per image]} logged next to the
reward. Protocol: rlzoo/rewards/remote.py.

Limits (as any WSGI server sets them; flags below): a request body of at most --max-body-bytes
(413 beyond, read no further), at most --max-pixels per decoded image and --max-request-pixels for
all images of a request (checked from the PNG headers before any pixel is decoded, so a small
file that would decode to gigabytes is refused with 413),
--timeout seconds for a whole request to arrive (an idle or half-sent connection is closed then),
--workers requests scored at once and --connections connections read at once (each by a thread
of a bounded pool: an idle client holds a connection, never a scoring slot), with a listen queue
of --backlog connections beyond them. A bad request gets a 4xx whose message says what was wrong
with it; a scorer that fails gets a 500 that says so, and its traceback goes to the server's
stderr, never to the client.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import importlib
import io
import json
import socket
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 2**20   # 64 images of 1024² as PNG fit comfortably
    max_pixels: int = 4096 * 4096      # per image; SD3.5 samples are 1024²
    max_request_pixels: int = 64 * 1024 * 1024  # all images of a request: 64 of 1024², 192 MB decoded
    timeout: float = 30.0              # seconds for a whole request (line, headers, body) to arrive
    workers: int = 8                   # requests scored at once
    connections: int = 64              # connections read at once (idle ones too), each by a pool thread
    backlog: int = 1024                # connections the kernel queues beyond those (socketserver's default: 5)


class BadRequest(Exception):
    """A request the server refuses: (status, message for the client)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def brightness(images, prompts, metadata):
    """Example scorer: mean pixel value in [0, 1] (a protocol check, not a reward to train on)."""
    return [float(image.mean()) / 255.0 for image in images]


def open_image(text, index: int, max_pixels: int):
    """A base64 PNG opened lazily: its header read, no pixel decoded yet; too many pixels is a 413."""
    from PIL import Image

    if not isinstance(text, str):
        raise BadRequest(400, f"images[{index}] is not a base64 string")
    too_large = BadRequest(413, f"images[{index}] has more pixels than this server's limit of {max_pixels:,}")
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the size is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    except Image.DecompressionBombError:  # (Pillow refuses outright beyond twice its own limit)
        raise too_large from None
    except (binascii.Error, ValueError, OSError):
        raise BadRequest(400, f"images[{index}] is not a base64-encoded image") from None
    if image.format != "PNG":
        raise BadRequest(400, f"images[{index}] is {image.format}, not PNG")
    width, height = image.size
    if width * height > max_pixels:
        raise BadRequest(413, f"images[{index}] has {width}x{height} pixels, more than this server's limit "
                              f"of {max_pixels:,}")
    return image


def decode_image(image, index: int):
    """An opened PNG -> HxWx3 uint8 array."""
    import numpy as np
    from PIL import Image

    try:
        return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        raise BadRequest(400, f"images[{index}] is a damaged PNG") from None


def parse_request(body: bytes, limits: Limits) -> tuple[list, list, list]:
    """(images, prompts, metadata) of a request body, or BadRequest saying what is wrong. Every
    image's size is read from its header, and the request's total checked, before any is decoded."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(400, "the body is not JSON (or nests too deep)") from None
    if not isinstance(request, dict):
        raise BadRequest(400, "the body is not a JSON object")
    prompts, images = request.get("prompts"), request.get("images")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest(400, "'prompts' must be a list of strings")
    if not isinstance(images, list) or len(images) != len(prompts):
        raise BadRequest(400, "'images' must be a list with one image per prompt")
    metadata = request.get("metadata") or [{} for _ in prompts]
    if not isinstance(metadata, list) or len(metadata) != len(prompts) or not all(isinstance(m, dict) for m in metadata):
        raise BadRequest(400, "'metadata' must be a list with one object per prompt")
    opened = [open_image(text, i, limits.max_pixels) for i, text in enumerate(images)]
    total = sum(image.size[0] * image.size[1] for image in opened)
    if total > limits.max_request_pixels:
        raise BadRequest(413, f"the request's {len(opened)} images have {total:,} pixels in all, more than this "
                              f"server's limit of {limits.max_request_pixels:,}; send fewer per request")
    return [decode_image(image, i) for i, image in enumerate(opened)], prompts, metadata


def score_answer(scorer: Callable, images: list, prompts: list, metadata: list) -> dict:
    """The scorer's answer in the protocol's shape (a scorer that breaks it is a 500)."""
    result = scorer(images, prompts, metadata)
    scores, info = result if isinstance(result, tuple) else (result, {})
    scores = [float(s) for s in scores]
    if len(scores) != len(images):
        raise RuntimeError(f"the scorer returned {len(scores)} scores for {len(images)} images")
    return {"scores": scores, "info": info}


def read_body(length: str | None, read: Callable[[int], bytes], limits: Limits) -> bytes:
    """The request body, by its Content-Length: 411 without one, 413 beyond the limit (unread)."""
    if length is None or not (length.strip().isascii() and length.strip().isdigit()):
        raise BadRequest(411, "a Content-Length header is required")
    if int(length) > limits.max_body_bytes:
        raise BadRequest(413, f"the body of {int(length):,} bytes is more than this server's limit of "
                              f"{limits.max_body_bytes:,}")
    body = read(int(length))
    if len(body) < int(length):
        raise OSError("the client sent less than its Content-Length")
    return body


def answer_request(length: str | None, read: Callable[[int], bytes], scorer: Callable, limits: Limits,
                   slots: contextlib.AbstractContextManager = contextlib.nullcontext()) -> tuple[int, dict]:
    """(status, JSON payload) for one POST, whichever server carries it: 4xx saying what is wrong
    with a bad request, 500 without details when the scorer fails (they go to stderr), else the
    scores, computed while holding one of the scoring `slots`. OSError when the client went away
    mid-request."""
    try:
        images, prompts, metadata = parse_request(read_body(length, read, limits), limits)
    except BadRequest as exc:
        return exc.status, {"error": str(exc)}
    try:
        with slots:
            return 200, score_answer(scorer, images, prompts, metadata)
    except Exception:
        traceback.print_exc(file=sys.stderr)  # the server's log has the details, the client does not
        return 500, {"error": "the scorer failed; the reward server's log has the traceback"}


STATUS_TEXT = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 411: "Length Required",
               413: "Content Too Large", 500: "Internal Server Error"}


def wsgi_app(scorer: Callable | str = f"{__name__}:brightness", **limits) -> Callable:
    """The same protocol as a WSGI application, for a production server that runs several worker
    processes (one per GPU, as FlowGRPO serves GenEval under gunicorn):

        gunicorn -w 8 -b 127.0.0.1:8000 --timeout 120 -c gpu_per_worker.py \
            'rlzoo.rewards.server:wsgi_app("my_module:score")'

    The WSGI server owns connections, workers and timeouts (README: the settings production
    needs); the body and image limits (Limits' fields as keywords) are checked here as `serve`
    checks them."""
    scorer = load_scorer(scorer) if isinstance(scorer, str) else scorer
    bounds = Limits(**limits)

    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") != "POST":
            status, payload = 405, {"error": "POST a JSON body {prompts, images, metadata}"}
        else:
            try:
                status, payload = answer_request(environ.get("CONTENT_LENGTH") or None, environ["wsgi.input"].read,
                                                 scorer, bounds)
            except OSError:  # the body ended before its Content-Length (the client stopped sending)
                status, payload = 400, {"error": "the body is shorter than its Content-Length"}
        body = json.dumps(payload).encode()
        start_response(f"{status} {STATUS_TEXT.get(status, '')}".strip(),
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def make_handler(scorer: Callable, limits: Limits = Limits()) -> type:
    slots = threading.BoundedSemaphore(limits.workers)  # requests scored at once

    class Handler(BaseHTTPRequestHandler):
        timeout = limits.timeout  # each read; the watchdog below bounds the whole request

        def setup(self):
            super().setup()
            # whatever the client does (nothing, or a byte at a time), the request must arrive by then
            self.watchdog = threading.Timer(limits.timeout, self._cut_off)
            self.watchdog.start()

        def finish(self):
            self.watchdog.cancel()
            super().finish()

        def _cut_off(self):
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def do_POST(self):  # noqa: N802 (http.server's naming)
            def read(n: int) -> bytes:
                body = self.rfile.read(n)
                self.watchdog.cancel()  # the request has arrived; scoring may take its time
                return body

            try:
                status, payload = answer_request(self.headers.get("Content-Length"), read, scorer, limits, slots)
            except (OSError, ValueError):  # the connection went away or was cut off mid-request
                self.close_connection = True
                return None
            return self._answer(status, payload)

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status >= 400:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client is gone
                self.close_connection = True

        def log_message(self, format, *args):  # quiet: one line per request is noise in training logs
            pass

    return Handler


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most `connections` connections in flight, each read by its own
    thread (bounded, so no flood of clients spawns unbounded threads; the handler bounds how many
    are scored at once): the accept loop waits for a free thread, and further connections queue
    in the kernel, up to `backlog` of them."""

    daemon_threads = True

    def __init__(self, address, handler, connections: int, backlog: int):
        self.slots = threading.BoundedSemaphore(connections)
        self.request_queue_size = backlog  # listen()'s queue, read by server_activate
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        self.slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve(scorer: Callable, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits()) -> BoundedHTTPServer:
    """A server (not yet serving: call serve_forever, e.g. in a thread); port 0 picks a free one."""
    return BoundedHTTPServer((host, port), make_handler(scorer, limits), max(limits.connections, limits.workers),
                             limits.backlog)


def load_scorer(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--scorer {spec!r} is not module:function")
    try:
        scorer = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ValueError(f"--scorer {spec!r}: module {module!r} cannot be imported ({exc})") from None
    except AttributeError:
        raise ValueError(f"--scorer {spec!r}: module {module!r} has no {name!r}") from None
    if not callable(scorer):
        raise ValueError(f"--scorer {spec!r} is not a function")
    return scorer


def _refuse(prog: str, message: str):
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scorer", default=f"{__name__}:brightness", help="module:function")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="per decoded image")
    parser.add_argument("--max-request-pixels", type=int, default=Limits.max_request_pixels,
                        help="all images of one request together")
    parser.add_argument("--timeout", type=float, default=Limits.timeout,
                        help="seconds for a whole request to arrive")
    parser.add_argument("--workers", type=int, default=Limits.workers, help="requests scored at once")
    parser.add_argument("--connections", type=int, default=Limits.connections,
                        help="connections read at once (idle ones too)")
    parser.add_argument("--backlog", type=int, default=Limits.backlog, help="connections queued beyond those")
    prog = "reward server"
    parser.error = lambda message: _refuse(prog, message)  # one line, not argparse's usage block
    args = parser.parse_args(argv)
    for name in ("max_body_bytes", "max_pixels", "max_request_pixels", "workers", "timeout", "connections", "backlog"):
        value = getattr(args, name)
        if not value > 0 or value == float("inf"):
            _refuse(prog, f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    if not 0 <= args.port <= 65535:
        _refuse(prog, f"--port must be in 0..65535, got {args.port}")
    try:
        scorer = load_scorer(args.scorer)
        server = serve(scorer, args.host, args.port, Limits(args.max_body_bytes, args.max_pixels,
                                                            args.max_request_pixels, args.timeout, args.workers,
                                                            args.connections, args.backlog))
    except ValueError as exc:
        _refuse(prog, str(exc))
    except OSError as exc:  # the port is taken, the address is not this machine's
        print(f"{prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"reward server on http://{args.host}:{server.server_address[1]}/ scoring with {args.scorer}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"{prog}: stopped", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
