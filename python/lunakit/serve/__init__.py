"""`lunakit serve`: the model bundle over HTTP (FastAPI on uvicorn), with dynamic request batching.

The web stack is optional: it is imported when the command runs, and a missing package is
reported by name (pip install fastapi uvicorn python-multipart).
"""

from __future__ import annotations

import signal
from typing import Any

from lunakit.errors import LunakitError


def serve(
    bundle: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: Any = None,
    access_log: bool = True,
    graceful_timeout_s: float | None = 60.0,
    log_level: str = "info",
) -> int:
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
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=graceful_timeout_s,
            lifespan="on",
        )
    )

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
