"""A private OpenAI-compatible HTTP server: `llmkit serve MODEL`.

    app.py       routes: /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings, /predict, ...
    protocol.py  request validation and OpenAI error bodies
    engine.py    the background thread that batches all requests on the model

`create_app(...)` builds the ASGI app (for tests or another ASGI server); `ServerThread` runs
it with uvicorn in a background thread on a free port.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
import time
from typing import Optional

from llmkit.errors import LLMKitError
from llmkit.serve.app import create_app

__all__ = ["create_app", "serve", "ServerThread", "exposure_warning"]


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine: localhost, 127.0.0.0/8, ::1
    (also IPv4-mapped, ::ffff:127.0.0.1). Any other name may resolve to a public address."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def exposure_warning(host: str, api_key: Optional[str]) -> Optional[str]:
    """The warning `serve` prints when it listens beyond this machine with no API key, else None."""
    if api_key or is_loopback(host):
        return None
    return (f"warning: listening on {host or 'every interface'} without an API key: anyone who can reach this "
            "port can use the model (and the machine's compute). Set --api-key or LLMKIT_API_KEY, or keep "
            "--host 127.0.0.1.")


class ServerThread:
    """uvicorn serving `app` from a daemon thread: `with ServerThread(app) as s: s.url`.

    Port 0 picks a free port: the socket is bound here, so `url` is known before the first
    request and no other process can take the port in between.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="llmkit-uvicorn")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 60) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server thread did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    max_batch_size: int = 16,
    max_seq_len: Optional[int] = None,
    style: Optional[str] = None,
    chat_template: Optional[str] = None,
    model_name: Optional[str] = None,
    device: str = "cpu",
    dtype: Optional[str] = None,
    max_request_mb: float = 8.0,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (completions, chat completions, embeddings).

    Args:
        model: an llmkit checkpoint directory, a Hugging Face model directory or a hub repo id
            (with its tokenizer files). An encoder (BERT, RoBERTa, ModernBERT, ...) or a
            classifier serves /v1/embeddings only (it cannot generate).
        host: address to listen on. The default accepts local connections only; use 0.0.0.0
            to listen on every interface (then set an API key: without one, a warning says
            that anyone who can reach the port can use the model).
        port: TCP port.
        api_key: require `Authorization: Bearer KEY` on every route but /health. Default: the
            LLMKIT_API_KEY environment variable if set (keeps the key out of the process list).
        max_batch_size: requests decoded together (KV cache rows); more wait in a queue.
        max_seq_len: tokens per request, prompt + completion (default: the model's context).
            The KV cache holds max_batch_size x max_seq_len positions.
        style: chat prompt format: "auto" (the model's chat template, else a style its
            vocabulary suggests, else alpaca) or alpaca, chatml, llama3, llama2, mistral, phi3,
            gemma, plain.
        chat_template: a Jinja chat template file to use instead of the model's.
        model_name: the model id in /v1/models and in responses (default: the folder name).
        device: cpu, cuda, cuda:1, ...
        dtype: float32 or bfloat16 (default: the checkpoint's).
        max_request_mb: largest request body accepted, in MiB; larger ones get HTTP 413 before
            they are read in full (8 MiB holds a batch of 16 prompts of 32k token ids).
    """
    if not 0 <= port <= 65535:
        raise LLMKitError(f"port must be in 0..65535, got {port}")
    if not max_request_mb > 0:
        raise LLMKitError(f"max_request_mb must be positive, got {max_request_mb}")
    if api_key is None:
        api_key = os.environ.get("LLMKIT_API_KEY") or None
    app = create_app(model, api_key=api_key, max_batch_size=max_batch_size, max_seq_len=max_seq_len, style=style,
                     chat_template=chat_template, model_name=model_name, device=device, dtype=dtype,
                     engine_thread=False, max_request_bytes=max(1, int(max_request_mb * 2**20)))
    warning = exposure_warning(host, api_key)
    if warning:
        print(warning, file=sys.stderr)
    engine = app.state.engine
    try:
        server = ServerThread(app, host, port, log_level="info")
    except OSError as e:  # the port is taken, the address is not ours...
        raise LLMKitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if engine.batch is not None:
        cache_bytes = sum(t.numel() * t.element_size() for t in engine.batch.cache.k + engine.batch.cache.v)
        what = f"batch {max_batch_size} x {engine.max_len} tokens, KV cache {cache_bytes / 2**20:.0f} MiB"
    else:  # an encoder or a classifier: embeddings only
        what = f"embeddings only: the model cannot generate; inputs up to {engine.max_len} tokens"
    print(f"serving {app.state.service.model_name} on {server.url}/v1 ({what}"
          f"{', API key required' if api_key else ''}); Ctrl-C stops", file=sys.stderr)
    # HTTP in a background thread, the model in this one: the thread that loaded the model
    # runs it fastest (see Engine.start).
    server.start()
    try:
        engine.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
