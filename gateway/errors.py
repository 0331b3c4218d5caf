"""Domain errors and the one table that maps them to HTTP responses."""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base: an error the client should see, with a status, a stable type and the field at fault."""

    status: ClassVar[int] = 500
    kind: ClassVar[str] = "internal"
    retry_after_s: ClassVar[int | None] = None  # a transient refusal tells the client when to come back

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {"type": self.kind, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class InvalidInput(GatewayError):
    status, kind = 422, "invalid_input"


class MalformedRequest(GatewayError):
    status, kind = 400, "malformed_request"


class PayloadTooLarge(GatewayError):
    status, kind = 413, "payload_too_large"


class Unauthorized(GatewayError):
    status, kind = 401, "unauthorized"


class Forbidden(GatewayError):
    status, kind = 403, "forbidden"


class NotFound(GatewayError):
    status, kind = 404, "not_found"


class Conflict(GatewayError):
    status, kind = 409, "conflict"


class Overloaded(GatewayError):
    status, kind = 429, "overloaded"
    retry_after_s = 1


class ModelUnavailable(GatewayError):
    status, kind = 503, "model_unavailable"
    retry_after_s = 10


class StoreDown(GatewayError):
    """The state store cannot be reached: a change to what the replicas share is refused, not lost."""

    status, kind = 503, "store_unavailable"
    retry_after_s = 5


class NotReady(GatewayError):
    status, kind = 503, "not_ready"
    retry_after_s = 5
