"""`jumpscope worker`: run queued jobs and serve encodings to the web server."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from app.core.commands import console, fail, open_store
from app.core.settings import Settings

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def worker(
    host: Annotated[
        str, typer.Option(help="Interface the encode API listens on (beyond loopback: set JUMPSCOPE_WORKER_TOKEN).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the encode API (the web server's JUMPSCOPE_WORKER_URL).")] = 8001,
    serve_encoder: Annotated[bool, typer.Option("--serve/--no-serve", help="Also serve encodings over HTTP.")] = True,
    name: Annotated[str | None, typer.Option(help="Worker name in the jobs table (default host:pid).")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue.")] = 2.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats of a running job.")] = 5.0,
    stale_after: Annotated[
        float, typer.Option(help="Requeue a running job whose worker was silent this long (seconds).")
    ] = 60.0,
    max_jobs: Annotated[int | None, typer.Option(help="Exit after this many jobs.")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="Exit after this many idle seconds.")] = None,
) -> None:
    """Run queued training and indexing jobs, and serve encodings to the web server over HTTP.

    The encode API serves the SAEs of this worker's store by name; with JUMPSCOPE_WORKER_TOKEN set it
    answers only callers that send that token (the web server does, from the same setting)."""
    import signal
    import threading

    from app.jobs.worker import Worker

    settings = Settings()
    token = settings.worker_token.get_secret_value() if settings.worker_token is not None else None
    if token is not None and not token.strip():
        raise fail("JUMPSCOPE_WORKER_TOKEN is set but empty: give it a long random value, or unset it")
    engine = open_store(settings)
    runner = Worker(settings, name=name, poll=poll, heartbeat_every=heartbeat, stale_after=stale_after, engine=engine)
    server = None
    if serve_encoder:
        import uvicorn

        from app.encoding.local import LocalEncoder
        from app.encoding.worker_api import StoreTargets, create_worker_app
        from app.steering.worker_api import add_worker_routes

        encoder = LocalEncoder(max_loaded=settings.max_loaded_saes, max_tokens=settings.encode_max_tokens,
                               max_batch_texts=settings.encode_max_batch, window_ms=settings.encode_window_ms,
                               batching=settings.encode_batching, device=settings.device,
                               max_values=settings.encode_max_values)  # fmt: skip
        targets = StoreTargets(engine)
        api = create_worker_app(encoder, targets, data_dir=settings.data_dir, token=token,
                                max_request_bytes=settings.max_request_bytes)  # fmt: skip
        add_worker_routes(api, encoder, targets, data_dir=settings.data_dir)  # steering and ablation
        config = uvicorn.Config(api, host=host, port=port, log_level="warning")
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True, name="encode-api").start()
        guarded = (
            "needs JUMPSCOPE_WORKER_TOKEN" if token else "open to anyone who reaches it (no JUMPSCOPE_WORKER_TOKEN)"
        )
        console.print(f"worker {runner.name}: encode API on http://{host}:{port}, {guarded}")
        if token is None and host not in LOOPBACK:
            console.print(
                f"[bold yellow]warning:[/] the encode API listens on {host} without a token: anyone who reaches the "
                "port can use this machine's CPU/GPU; set JUMPSCOPE_WORKER_TOKEN here and on the web server"
            )

    def stop(_signum: int, _frame: Any) -> None:
        console.print("stopping: the running job checkpoints and returns to the queue")
        runner.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    done = runner.run(max_jobs=max_jobs, idle_exit=idle_exit)
    if server is not None:
        server.should_exit = True
    console.print(f"worker {runner.name}: {done} jobs run")


def register(cli: typer.Typer) -> None:
    """Add worker to the root command."""
    cli.command()(worker)
