"""Request bodies of the OpenAI-compatible routes. Unknown fields are ignored, as OpenAI does; fields
OpenAI defines that kdgate does not serve are parsed so that `unsupported()` can refuse them by name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

DEFAULT_MAX_TOKENS = {"chat": 64, "completion": 16}  # OpenAI's completions default is 16


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def as_template_message(self) -> dict[str, str]:
        """The message the chat template reads (a developer message is a system message to it)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class OpenAIRequest(BaseModel):
    """What both routes share."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's default; 0 is greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt = Field(1, ge=1)
    user: StrictStr | None = None
    logit_bias: dict[str, Any] | None = None

    def logprob_count(self) -> int | None:
        """How many alternatives to report per token (0: the chosen one only), or None for no logprobs."""
        return None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def unsupported(self) -> str | None:
        """The first field asking for what kdgate does not serve, or None."""
        if self.n != 1:
            return "n"
        if self.logit_bias:
            return "logit_bias"
        if len(self.stops()) > 4:
            return "stop"
        return None


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessageIn]
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def token_budget(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS["chat"]

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format"
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs"
        return super().unsupported()

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(OpenAIRequest):
    prompt: StrictStr | list[StrictStr]
    logprobs: StrictInt | None = Field(None, ge=0, le=5)
    echo: StrictBool = False
    suffix: StrictStr | None = None

    def token_budget(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS["completion"]

    def text(self) -> str | None:
        """The one prompt (a list must hold exactly one), or None."""
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if len(self.prompt) == 1 else None

    def unsupported(self) -> str | None:
        if self.text() is None:
            return "prompt"
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        return super().unsupported()

    def logprob_count(self) -> int | None:
        return self.logprobs
