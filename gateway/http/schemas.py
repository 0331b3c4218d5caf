"""Request and response bodies of the HTTP API (pydantic: types are checked before any handler runs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator


class ClassifyRequest(BaseModel):
    """Either `text` or `texts` (size limits are settings, checked by the handler)."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr | None = Field(None, examples=["I love this new phone"])
    texts: list[StrictStr] | None = Field(None, examples=[["great service", "terrible delay"]])

    @model_validator(mode="after")
    def _exactly_one(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    request_id: str
    results: list[Prediction]


class TrafficUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, Any] = Field(examples=[{"classify-student@1": 25, "classify-teacher@1": 75}])


class ShadowRatesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rates: dict[str, Any] = Field(examples=[{"classify-student@2": 0.25}])


class ShadowHold(BaseModel):
    """A run reading the shadow log from `since` (epoch seconds) on; `ttl_s` bounds a hold nobody
    releases (default: gateway.shadow.protection.HOLD_TTL_S)."""

    model_config = ConfigDict(extra="forbid")

    since: float = Field(ge=0, allow_inf_nan=False, examples=[1_700_000_000.0])
    ttl_s: float | None = Field(None, gt=0, le=7 * 86400, allow_inf_nan=False)


class ErrorBody(BaseModel):
    error: dict[str, str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: StrictStr


class GenerateRequest(BaseModel):
    """Either `prompt` (raw text, continued as is) or `messages` (chat, through the chat template).

    Limits that are settings (`max_tokens`, prompt length) are checked by the handler.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr | None = Field(None, examples=["The stock market today"])
    messages: list[ChatMessage] | None = Field(
        None, examples=[[{"role": "user", "content": "Summarize: shares fell sharply on Monday."}]]
    )
    max_tokens: StrictInt = Field(64, ge=1, description="Upper bound on generated tokens")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[StrictStr] | None = Field(None, max_length=4, description="Generation ends before these")
    seed: StrictInt | None = Field(None, description="Makes sampling reproducible")
    stream: StrictBool = Field(False, description="Server-sent events, one per text delta")

    @model_validator(mode="after")
    def _exactly_one(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    model: str
    request_id: str
    text: str
    finish_reason: str
    usage: Usage
