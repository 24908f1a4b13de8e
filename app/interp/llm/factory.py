"""`--llm` / `--llm-model` -> a ChatBackend (interface.md, `jumpscope explain`)."""

from __future__ import annotations

from app.core.settings import Settings
from app.interp.llm.base import ChatBackend


def backend_from_spec(llm: str | None, *, model: str | None, settings: Settings) -> ChatBackend:
    """The backend a spec names: None or '' -> the offline default (in-process SmolLM2-135M-Instruct);
    'http(s)://...' -> an OpenAI-compatible endpoint serving `model` (required), with the key, concurrency,
    timeout and retries from settings (JUMPSCOPE_LLM_*); anything else -> an in-process model (hub id,
    folder or .gguf file) on settings.device.

    Raises ValueError with the fix for a bad spec, ModelError (a ValueError) for a model that cannot load.
    """
    spec = (llm or "").strip()
    if spec.lower().startswith(("http://", "https://")):
        if not model or not model.strip():
            raise ValueError(
                f"--llm {spec} is an OpenAI-compatible endpoint: name the model it serves with --llm-model "
                "(e.g. --llm-model llama3.1:8b; GET <base URL>/models lists them)"
            )
        from app.interp.llm.openai_compat import OpenAIChat

        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else None
        return OpenAIChat(
            spec,
            model,
            key,
            concurrency=settings.llm_concurrency,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )
    if "://" in spec:
        raise ValueError(f"--llm {spec}: only http:// and https:// endpoints are supported")
    if model:
        raise ValueError(
            "--llm-model names the model of an http(s):// --llm endpoint; for an in-process model pass its hub "
            f"id or folder as --llm (got --llm {spec or '(the offline default)'} --llm-model {model})"
        )
    from app.interp.llm.local_hf import LocalChat

    return LocalChat(spec or None, device=settings.device)
