"""Domain errors raised by services and selectors; the API and the pages map them to responses."""


class TandemError(Exception):
    status = 400

    def __init__(self, message: str, *, errors: list[dict] | None = None):
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class NotFound(TandemError):
    """The object does not exist or is outside the caller's projects: the two look the same."""

    status = 404


class Forbidden(TandemError):
    """The caller can see the object but their role does not allow the action."""

    status = 403


class InvalidInput(TandemError):
    status = 400


class Conflict(TandemError):
    status = 409


class TooLarge(TandemError):
    status = 413


class ServiceUnavailable(TandemError):
    """A service Tandem depends on (the broker) is down; nothing was stored, try again later."""

    status = 503
