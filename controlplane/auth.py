"""How API callers authenticate, set once on the NinjaAPI for every router:
a bearer token (``Authorization: Bearer hgr_…``) or the browser session.
Either way ``request.auth`` is the :class:`Actor` the handlers pass to the verbs.
"""
from __future__ import annotations

from django.http import HttpRequest
from ninja.security import APIKeyCookie, HttpBearer

from deployments import actions
from deployments.audit import Actor


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Actor | None:
        api_token = actions.authenticate_token(token)
        if api_token is None:
            return None
        request.user = api_token.user
        request.api_token = api_token
        return Actor.from_request(request, "api")


class Session(APIKeyCookie):
    """Session cookie auth for the UI's own calls; CSRF enforced on writes.

    A request without a logged-in session is unauthenticated (401) whatever
    cookie it sends; only a real session's write without the CSRF token is
    refused as such (403)."""

    param_name = "sessionid"

    def __call__(self, request: HttpRequest) -> Actor | None:
        if not request.user.is_authenticated:
            return None
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, key: str | None) -> Actor | None:
        return Actor.from_request(request, "api")


API_AUTH = [BearerToken(), Session()]
