"""REST bodies of steering (POST /api/v1/saes/{sae}/steer) and ablation (POST .../features/{index}/ablate).

Bounds that need no model are checked here (a 422 naming the field); those that need the SAE or the
tokenizer (a feature index below d_sae, the prompt's token count, the model's context length) are
checked by app.steering.engine, also as 422.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.schemas import NO_NUL, StrictBody

MAX_PROMPT_CHARS = 4_000
"""Characters of a steering prompt."""
MAX_PROMPT_TOKENS = 256
"""Tokens of a steering prompt, BOS included (also at most the server's JUMPSCOPE_ENCODE_MAX_TOKENS)."""
MAX_NEW_TOKENS = 128
"""Tokens generated per continuation."""
MAX_INTERVENTIONS = 16
"""Interventions per request."""
MAX_STRENGTH = 1e5
"""|strength| and |clamp| bound, in the SAE's raw units (Gemma 3 270M's residual norms are ~1e3-1e4; BOS ~1e5)."""
MAX_TEMPERATURE = 5.0
"""Sampling temperature bound (0 is greedy)."""
MAX_SEED = 2**32 - 1
"""Seeds are 0 <= seed <= MAX_SEED (a server-chosen seed is in the same range, so every run can be repeated)."""
MAX_ABLATE_CHARS = 20_000
"""Characters of an ablation text."""
MAX_ABLATE_TOKENS = 256
"""Tokens of an ablation text, BOS included (also at most JUMPSCOPE_ENCODE_MAX_TOKENS)."""
MAX_TOP_TOKENS = 50
"""Promoted and suppressed tokens listed per position."""


class InterventionIn(StrictBody):
    """One intervention on one feature: exactly one of `strength` (add) or `clamp`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    feature: int = Field(ge=0)
    """Feature index, below the SAE's d_sae."""
    strength: float | None = Field(None, ge=-MAX_STRENGTH, le=MAX_STRENGTH, allow_inf_nan=False)
    """Add strength x the feature's decoder direction (unit norm) to the activations, in the SAE's raw units."""
    clamp: float | None = Field(None, ge=-MAX_STRENGTH, le=MAX_STRENGTH, allow_inf_nan=False)
    """Set the feature's activation to this value through the SAE's reconstruction, keeping its error term
    (0 ablates it)."""

    @model_validator(mode="after")
    def _one_kind(self) -> InterventionIn:
        if (self.strength is None) == (self.clamp is None):
            raise ValueError("give exactly one of strength (add the decoder direction) or clamp (set the activation)")
        return self


class SteerIn(StrictBody):
    """A prompt, the interventions and how to decode."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NO_NUL)
    """The text to continue (tokenised as in training; BOS prepended when the SAE was trained with it)."""
    interventions: list[InterventionIn] = Field(default_factory=list, max_length=MAX_INTERVENTIONS)
    """Applied to the steered continuation only; empty: the steered continuation is the baseline."""
    positions: Literal["all", "from_prompt_end"] = "all"
    """Where the interventions act: every position of prompt and continuation (BOS excepted), or from the
    prompt's last token on (what predicts the first new token, and every new token)."""
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS)
    """Tokens generated at most per continuation (each stops earlier at the end-of-sequence token)."""
    temperature: float = Field(0.0, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False)
    """0: greedy; above 0: sampled from softmax(logits / temperature)."""
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    """Seed of the sampling (both continuations use it); none: the server picks one and returns it."""


class ContinuationOut(BaseModel):
    """One generated continuation."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    text: str
    """The new tokens decoded together (special tokens left out)."""
    tokens: list[str]
    """Each new token decoded on its own."""
    token_ids: list[int]
    logprobs: list[float]
    """log p of each new token under the model's own distribution (temperature 1), in nats."""
    finish_reason: Literal["stop", "length"]
    """stop: it ended with the end-of-sequence token (its last token); length: it reached max_new_tokens."""


class SteerOut(BaseModel):
    """The steered and the unsteered continuation of one prompt, generated in one batch."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    sae: str
    prompt_tokens: list[str]
    """The prompt's tokens as the model saw them (BOS included when prepended)."""
    steered: ContinuationOut
    baseline: ContinuationOut
    seed: int | None
    """The sampling seed used (send it back to repeat the run); null when greedy."""
    steered_from: int
    """The first position (index into prompt_tokens) the interventions acted on."""


class AblateIn(StrictBody):
    """A text to measure one feature's effect on."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    text: str = Field(min_length=1, max_length=MAX_ABLATE_CHARS, pattern=NO_NUL)
    """Tokenised as in training (BOS prepended when the SAE was trained with it)."""
    top_tokens: int = Field(10, ge=1, le=MAX_TOP_TOKENS)
    """Promoted and suppressed tokens listed per position and over the text."""


class TokenShiftOut(BaseModel):
    """A vocabulary token and how its next-token log-probability changes when the feature is zeroed."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    token_id: int
    token: str
    delta: float
    """log p(ablated) - log p(clean), nats: negative where the feature promotes the token, positive where it
    suppresses it."""


class PositionOut(BaseModel):
    """The prediction made at one position of the text (of the token that follows it)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    token: str
    token_id: int
    activation: float
    """The feature's activation here, in the clean pass."""
    next_delta: float | None
    """Change of log p(the actual next token) when the feature is zeroed; null at the last position."""
    next_logprob: float | None
    """log p(the actual next token) in the clean pass; null at the last position."""
    promoted: list[TokenShiftOut]
    """Tokens the feature pushes up here: their log-probability falls most when it is zeroed (most first)."""
    suppressed: list[TokenShiftOut]
    """Tokens the feature pushes down here: their log-probability rises most when it is zeroed (most first)."""


class AblateOut(BaseModel):
    """The effect of zeroing one feature (through the SAE's error term) on a text's next-token predictions.

    The direct, weight-based view of the same question is the dashboard's logit lens (W_dec[feature] @ W_U)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    sae: str
    feature: int
    ablated_from: int
    """The first position zeroed (1 when a BOS is prepended: BOS is never touched)."""
    positions: list[PositionOut]
    """One per token of the text (BOS included when prepended)."""
    promoted: list[TokenShiftOut]
    """Over the text: tokens with the most negative mean change (the feature promotes them)."""
    suppressed: list[TokenShiftOut]
    """Over the text: tokens with the most positive mean change (the feature suppresses them)."""
