"""`lunakit serve`: the model bundle over HTTP (FastAPI on uvicorn), with dynamic request batching.

The web stack is optional: it is imported when the command runs, and a missing package is
reported by name (pip install fastapi uvicorn python-multipart).
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from lunakit.errors import LunakitError


def serve(bundle: str, host: str = "127.0.0.1", port: int = 8000, config: Any = None,
          access_log: bool = True, graceful_timeout_s: float | None = 60.0, log_level: str = "info") -> int:
    """Load `bundle`, serve it until SIGTERM / SIGINT; returns 0 after a graceful shutdown.

    On SIGTERM uvicorn stops accepting connections, lets in-flight requests finish (for at most
    `graceful_timeout_s`), then the app's shutdown drains the batcher; the process exits 0.
    """
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise LunakitError("lunakit serve needs uvicorn: pip install uvicorn fastapi python-multipart") from None
    from lunakit.serve.app import ServeConfig, create_app

    app = create_app(bundle, config or ServeConfig())
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=access_log,
        timeout_graceful_shutdown=graceful_timeout_s, lifespan="on",
    ))

    def on_sigterm(signum: int, frame: Any) -> None:
        # Before uvicorn installs its own handler this starts the shutdown; after its graceful
        # shutdown uvicorn re-raises the signal to this handler, which then does nothing more.
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise LunakitError(f"lunakit serve: could not start the server on {host}:{port} (see the log above)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from lunakit.serve.app import ServeConfig

    config = ServeConfig(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_crops_per_request=args.max_crops, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        max_analyses=args.max_analyses, device=args.device, upload_dir=args.upload_dir,
    )
    graceful = None if args.graceful_timeout <= 0 else args.graceful_timeout
    return serve(args.bundle, args.host, args.port, config, access_log=args.access_log,
                 graceful_timeout_s=graceful, log_level=args.log_level)


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="serve a model bundle over HTTP (classify crops, analyze scans)")
    p.add_argument("--bundle", required=True, help="model bundle folder (lunakit export)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=64, help="crops per model call (default 64; 1 = no batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default 5)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for the model; more get 503 + Retry-After (default 256)")
    p.add_argument("--max-crops", type=int, default=256, help="crops per /v1/classify request (default 256)")
    p.add_argument("--max-upload-mb", type=float, default=2048, help="largest /v1/analyze body in MiB (default 2048)")
    p.add_argument("--max-analyses", type=int, default=2,
                   help="whole-scan analyses running or waiting; more get 503 (default 2)")
    p.add_argument("--upload-dir", default=None, help="folder for temporary upload files (default: system temp)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--graceful-timeout", type=float, default=60.0,
                   help="seconds in-flight requests get to finish after SIGTERM (0: no limit; default 60)")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="log every request (default on)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_cmd_serve)
