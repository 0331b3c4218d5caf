"""Request and response bodies of the HTTP API (pydantic: types are checked before any handler runs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator


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


class ErrorBody(BaseModel):
    error: dict[str, str]
