"""Domain errors, mapped once to HTTP status codes by the API and the UI."""
from __future__ import annotations


class DomainError(Exception):
    status = 400

    def __init__(self, detail: object = None):
        super().__init__(detail)
        self.detail = detail if detail is not None else self.default_detail

    default_detail = "Bad request."


class Invalid(DomainError):
    """A well-formed request with a value that is not acceptable (422, like the
    schema's own validation errors); detail names the field when there is one."""

    status = 422
    default_detail = "Invalid input."


class Unprocessable(Invalid):
    """Well-formed input that a schema refuses (e.g. a pattern's settings)."""

    status = 422


class NotFound(DomainError):
    status = 404
    default_detail = "Not found."


class Forbidden(DomainError):
    status = 403
    default_detail = "Your role in this team does not allow this."


class Conflict(DomainError):
    status = 409
    default_detail = "Conflict with the current state."


def may_raise(*errors: type[DomainError]):
    """Declare on an API view the domain errors it can answer beyond those its
    shape implies (see ``controlplane.api.error_statuses``), so the OpenAPI
    document lists them."""

    def mark(view):
        view.may_raise = (*getattr(view, "may_raise", ()), *errors)
        return view

    return mark
