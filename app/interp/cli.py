"""`jumpscope explain NAME`: explain features with an LLM and score the explanations (app.interp.pipeline)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from app.core.commands import console, fail, open_store
from trainer.device import Device

if TYPE_CHECKING:
    from app.interp.pipeline import ExplainSummary

_HELP = """Explain features of an indexed SAE with an LLM and score each explanation on held-out examples.

The LLM reads each feature's shown top and band examples (activating tokens marked) and writes a short
explanation; then, from the explanation alone, it is scored on held-out examples it never saw (held-out
top and band examples, and random windows where the feature does not fire):

- simulation: the LLM predicts a 0-10 activation for every token; the score is the Pearson correlation
  with the true activations (Bills et al. 2023; the JumpReLU paper's Fig. 7). 1 is perfect, 0 chance.

- detection: the LLM says which contexts the feature fires in at all (activating vs non-activating, in
  equal numbers); the score is the balanced accuracy (delphi). 0.5 is chance.

- fuzzing: the LLM says whether the marked tokens of a context are the ones the feature fires on or random
  ones; balanced accuracy (delphi). 0.5 is chance.

Explanations and scores are stored (see the feature pages) as each feature is done; a rerun skips the
features this LLM and prompt version already explained, so an interrupted run resumes. An answer with no
usable explanation is kept as a failed attempt with its raw text.

The default LLM is the offline in-process SmolLM2-135M-Instruct: a 135M model follows the prompts but its
explanations are vague. For real numbers point --llm at an OpenAI-compatible endpoint (vLLM, Ollama,
llama.cpp's server, OpenAI, or `jumpscope llm-serve`): --llm http://localhost:11434/v1 --llm-model
llama3.1:8b, with the key (if any) in JUMPSCOPE_LLM_API_KEY; or give --llm a local chat model folder or hub id.

--baseline random also builds a randomly initialised SAE of the same shape (NAME-random), indexes it like
NAME and explains and scores it the same way: the paper's baseline."""
HELP = "\n\n".join(" ".join(paragraph.split()) for paragraph in _HELP.split("\n\n"))
"""The --help text: one line per paragraph (the terminal wraps it)."""


def _features(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    try:
        values = [int(part) for part in spec.replace(" ", "").split(",") if part]
    except ValueError:
        raise fail(f"--features takes feature indices separated by commas (e.g. 1,2,3), got {spec!r}") from None
    if not values:
        raise fail("--features is empty: name at least one feature (e.g. --features 1,2,3)")
    if any(v < 0 for v in values):
        raise fail(f"--features: feature indices are 0 or more, got {min(values)}")
    return values


def explain(
    name: Annotated[str, typer.Argument(help="A registered, indexed SAE (see `jumpscope index`).")],
    features: Annotated[str | None, typer.Option(help="Features to explain, separated by commas (e.g. 1,2,3).")] = None,
    sample: Annotated[int | None, typer.Option(help="Explain this many live features drawn at random.")] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            help="The LLM: an http(s):// base URL of an OpenAI-compatible server (with --llm-model; key from "
            "JUMPSCOPE_LLM_API_KEY), a local chat model folder or hub id; default: the offline SmolLM2-135M-Instruct."
        ),
    ] = None,
    llm_model: Annotated[str | None, typer.Option(help="The model an http(s) --llm endpoint serves.")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="'random': also explain a random-init SAE of the same shape (NAME-random).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the feature sample, the scores' draws and the baseline.")] = 0,
    retry_failed: Annotated[
        bool, typer.Option(help="Explain again the features whose earlier answer held no explanation.")
    ] = False,
    device: Annotated[Device, typer.Option(help="Where an in-process LLM and the baseline's index run.")] = "auto",
) -> None:
    import signal

    from app.catalog.saes import RegistryError
    from app.core.settings import Settings
    from app.interp.llm.base import LLMError
    from app.interp.llm.factory import backend_from_spec
    from app.interp.pipeline import ExplainOptions, LLMUnavailable, choose_features, explain_sae

    wanted = _features(features)
    if (wanted is None) == (sample is None):
        raise fail("give either --features 1,2,3 or --sample N")
    if sample is not None and sample < 1:
        raise fail(f"--sample must be at least 1, got {sample}")
    if baseline not in (None, "random"):
        raise fail(f"--baseline takes 'random' (a randomly initialised SAE of the same shape), got {baseline!r}")
    chosen_baseline: Literal["random"] | None = "random" if baseline == "random" else None
    settings = Settings()
    settings.device = device
    engine = open_store(settings)
    try:  # a bad name or an unindexed SAE fails before the LLM loads
        choose_features(engine, name, features=wanted, sample=sample, seed=seed)
        backend = backend_from_spec(llm, model=llm_model, settings=settings)
    except (RegistryError, ValueError) as err:
        raise fail(str(err)) from None

    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.close()
            unit = "tok" if stage.startswith("index ") else "feature"
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=unit, unit_scale=unit == "tok")
        bar.update(min(done, total) - bar.n)

    def terminate(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = explain_sae(
            engine, name, backend=backend, features=wanted, sample=sample, seed=seed, baseline=chosen_baseline,
            options=ExplainOptions(retry_failed=retry_failed), progress=progress, data_dir=settings.data_dir,
            device=device,
        )  # fmt: skip
    except KeyboardInterrupt:
        console.print("interrupted: every feature finished before the interrupt is stored; rerun to resume")
        raise typer.Exit(code=130) from None
    except LLMUnavailable as err:
        _report(err.summary)
        raise fail(str(err)) from None
    except (RegistryError, ValueError, LLMError) as err:
        raise fail(str(err)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        for bar in bars.values():
            bar.close()

    _report(summary)
    if summary.baseline is not None:
        _report(summary.baseline)


def _report(s: ExplainSummary) -> None:
    """One line: what the run did, its speed and its mean scores."""
    means = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k in s.scores for v in [s.mean(k)])
    console.print(
        f"explained {s.name} with {s.llm} ({s.prompt_version}): {len(s.features)} features, {s.skipped} already "
        f"done, {s.ok} explained, {s.failed} failed attempts, {s.errors} LLM errors; "
        f"{s.per_minute:.2f} features/min; mean scores this run: {means}"
    )


def register(cli: typer.Typer) -> None:
    """Add explain to the root command."""
    cli.command(help=HELP)(explain)
