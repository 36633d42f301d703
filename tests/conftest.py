import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def server():
    """Start a reward server on 127.0.0.1 (a free port) with the given stdlib handler class, or
    rlzoo's reference server with the given scorer; its URL. Stopped afterwards."""
    import threading
    from http.server import ThreadingHTTPServer

    from rlzoo.rewards.server import serve

    started = []

    def start(scorer=None, handler=None) -> str:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler) if handler else serve(scorer, port=0)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()
