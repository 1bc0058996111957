"""Domain errors: what services raise, and what the API and the pages turn into a message.

Every service raises one of these with a message a person can act on; `field` names the
form field it belongs to, when there is one. `workers.api.api_exception_handler` maps
them to one JSON shape, `{"detail": "...", "errors": {"field": ["..."]}}`, with the status
below; the pages show the same message on their forms.
"""
from __future__ import annotations


class JobError(Exception):
    """A request that cannot be done as asked (400)."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Forbidden(JobError):
    """The user may see this but not do that (403)."""

    status_code = 403


class NotFound(JobError):
    """No such object, or none this user may see (404)."""

    status_code = 404


class Conflict(JobError):
    """The request clashes with the state of something else, e.g. deleting a dataset that
    a model uses (409)."""

    status_code = 409
