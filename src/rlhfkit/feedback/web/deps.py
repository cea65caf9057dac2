"""What the studio's routes share: the app's state (``Studio``), the refusals its exception
handlers answer, the request dependencies (the signed-in annotator, an admin, a CSRF-checked
form, the current campaign) and rendering a page.

The labelling routes (``app``) and the admins' routes (``admin``) both build on this module,
FastAPI's usual place for dependencies, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import FormData

from rlhfkit.feedback.payload import PayloadError
from rlhfkit.feedback.store import ConflictError, NotAllowedError, NotFoundError, Store
from rlhfkit.feedback.views import AnnotatorInfo
from rlhfkit.feedback.web.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LoginLimiter,
    PasswordChecks,
    csrf_ok,
    csrf_token,
)

ERROR_STATUS = {PayloadError: 422, ConflictError: 409, NotFoundError: 404, NotAllowedError: 403}


@dataclass(frozen=True)
class Studio:
    """What the routes share: the store, the fixed campaign (or None), the login limiter and
    the bound on password checks running at once."""

    store: Store
    campaign: str | None
    limiter: LoginLimiter
    templates: jinja2.Environment
    password_checks: PasswordChecks


class NotSignedIn(Exception):
    """No valid session: HTML requests go to /login, API requests get 401."""


class Refused(Exception):
    """A request answered with an error status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class NoCampaign(Exception):
    """The session has not picked a campaign yet."""


def studio(request: Request) -> Studio:
    return request.app.state.studio


def signed_in(request: Request) -> AnnotatorInfo:
    """The signed-in annotator, read afresh (an admin flag or account may have changed). A
    cookie from before the account's sessions were ended (signing out, a new password) names
    an older epoch and is refused: a copied cookie dies with the session it came from."""
    name = request.session.get("user")
    who = studio(request).store.get_annotator(name) if isinstance(name, str) else None
    if who is None or request.session.get("epoch") != who.session_epoch:
        request.session.clear()
        raise NotSignedIn()
    return who


SignedIn = Annotated[AnnotatorInfo, Depends(signed_in)]


def admin(who: SignedIn) -> AnnotatorInfo:
    if not who.is_admin:
        raise Refused(403, "this page is for admins: ask one to make your account an admin")
    return who


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token is the session's (403 otherwise)."""
    form = await request.form()
    if not csrf_ok(request.session, form.get(CSRF_FIELD)):
        raise Refused(
            403, "the form's security token is missing or stale: reload the page and try again"
        )
    return form


Admin = Annotated[AnnotatorInfo, Depends(admin)]
CheckedForm = Annotated[FormData, Depends(checked_form)]


def signed_in_with_header(request: Request, who: SignedIn) -> AnnotatorInfo:
    """The signed-in annotator of an API call that sent the session's CSRF token."""
    if not csrf_ok(request.session, request.headers.get(CSRF_HEADER)):
        raise Refused(
            403,
            f"send the session's CSRF token in the {CSRF_HEADER} header (GET /api/next gives it)",
        )
    return who


SignedInWithHeader = Annotated[AnnotatorInfo, Depends(signed_in_with_header)]


def current_campaign(request: Request) -> str:
    chosen = studio(request).campaign or request.session.get("campaign")
    if not isinstance(chosen, str):
        raise NoCampaign()
    return chosen


def page(
    request: Request,
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """``template`` rendered with ``context``, the session's CSRF token and any notice."""
    context.setdefault("who", None)
    context.setdefault("error", "")
    html = (
        studio(request)
        .templates.get_template(template)
        .render(
            csrf_token=csrf_token(request.session),
            notice=request.session.pop("notice", ""),
            fixed_campaign=studio(request).campaign is not None,
            **context,
        )
    )
    return HTMLResponse(html, status_code=status, headers=headers)


def see_other(url: str) -> RedirectResponse:
    """A 303 to ``url``: after a POST, the browser GETs it, so a reload cannot post again."""
    return RedirectResponse(url, status_code=303)
