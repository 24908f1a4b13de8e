"""`jumpscope llm-serve`: share one in-process chat model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer

from app.core.commands import console, fail
from app.core.settings import Settings

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def llm_serve(
    model: Annotated[
        str,
        typer.Option(help="'smollm2' (the offline default, packaged), a local chat model folder, a hub id or a .gguf."),
    ] = "smollm2",
    host: Annotated[str, typer.Option(help="Interface to listen on (beyond loopback: --require-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; clients use --llm http://HOST:PORT/v1.")] = 8080,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default JUMPSCOPE_DEVICE).")] = None,
    gguf_file: Annotated[str | None, typer.Option(help="A GGUF file inside the --model folder or hub repo.")] = None,
    max_tokens_cap: Annotated[int, typer.Option(min=1, help="Largest max_tokens a request may ask for.")] = 1024,
    max_prompt_chars: Annotated[
        int, typer.Option(min=1, help="Characters over all messages of a request; more is a 422.")
    ] = 100_000,
    require_key: Annotated[
        bool, typer.Option(help="Answer only requests carrying JUMPSCOPE_LLM_API_KEY as a Bearer token.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="torch CPU threads (default: one per core); 1 is much faster on a busy CPU."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a chat model over an OpenAI-compatible API (/v1/chat/completions, /v1/models), so that several
    `jumpscope explain --llm http://HOST:PORT/v1 --llm-model ID` processes share one loaded model."""
    import torch
    import uvicorn

    from app.interp.llm.local_hf import LocalChat
    from app.interp.llm.server import create_llm_app

    settings = Settings()
    key = None
    if require_key:
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else ""
        if not key.strip():
            raise fail("--require-key needs JUMPSCOPE_LLM_API_KEY set to a long random string")
    if threads is not None:  # this process serves one model: its thread count is ours to set
        torch.set_num_threads(threads)
    try:
        chat = LocalChat(model, device=device or settings.device, gguf_file=gguf_file)
    except ValueError as err:  # ModelError: cannot load, no chat template, bad device
        raise fail(str(err)) from None
    app = create_llm_app(chat, max_tokens_cap=max_tokens_cap, max_prompt_chars=max_prompt_chars,
                         max_request_bytes=settings.max_request_bytes, api_key=key)  # fmt: skip
    guarded = "needs JUMPSCOPE_LLM_API_KEY" if key else "open to anyone who reaches it"
    console.print(f"llm-serve: {chat.model_name} on {chat.device} at http://{host}:{port}/v1, {guarded}")
    if key is None and host not in LOOPBACK:
        console.print(f"[bold yellow]warning:[/] listening on {host} without a key: anyone who reaches the port "
                      "can use this machine's CPU/GPU; add --require-key")  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def register(cli: typer.Typer) -> None:
    """Add llm-serve to the root command."""
    cli.command("llm-serve")(llm_serve)
