"""The feedback studio's routes: sign in, label tasks, and (admins) watch progress and export.

    GET  /login, POST /login, POST /logout        signing in and out
    GET  /campaigns, POST /campaigns              pick a campaign (when the app has none fixed)
    GET  /label                                   the next task, or "all done"
    POST /label, POST /skip, POST /undo           answer it, pass on it, take the last one back
    GET  /admin, /admin/...                       admins' pages (``admin``): progress,
                                                  agreement, exports, accounts, overlap, gold
    GET  /api/next, POST /api/label               the same labelling as JSON (scripts, load tests)

Pages are rendered on the server (Jinja2, autoescaped): model text reaches the browser as text,
never as markup. Every route but ``/login`` and ``/static`` needs a signed-in session; every
POST needs the session's CSRF token (``auth``). Each task form carries a fresh ``request_id``
and the store stores a submission once per id, so a double click or a retried POST makes one
label; after a submission the browser is redirected (303) to the next task, so reloading the
page cannot post it again. Store calls are blocking, so the routes that make them are plain
``def`` functions, which FastAPI runs in its thread pool.

Input is checked at the edge: a request body over ``max_body_bytes`` is refused (413) before a
route reads it, a label text over ``max_text_chars`` gets 422, a task id must be ASCII digits
within a signed 64-bit integer (400), and the store serves an annotator only the task it
offered them (``Store.submit_label``). Every refusal is a 4xx with a one-line reason: JSON
``{"error": ...}`` under ``/api/``, an HTML page elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware

from rlhfkit.errors import ConfigError
from rlhfkit.feedback.payload import PayloadError
from rlhfkit.feedback.records import FLAGS
from rlhfkit.feedback.store import ConflictError, NotAllowedError, NotFoundError, Store
from rlhfkit.feedback.views import AnnotatorInfo, TaskView
from rlhfkit.feedback.web import admin
from rlhfkit.feedback.web.auth import (
    Busy,
    LoginLimiter,
    PasswordChecks,
    csrf_token,
    verify_password,
)
from rlhfkit.feedback.web.deps import (
    ERROR_STATUS,
    CheckedForm,
    NoCampaign,
    NotSignedIn,
    Refused,
    SignedIn,
    SignedInWithHeader,
    Studio,
    current_campaign,
    page,
    see_other,
    signed_in,
    studio,
)
from rlhfkit.feedback.web.forms import label_payload
from rlhfkit.feedback.web.limits import (
    MAX_BODY_BYTES,
    MAX_TEXT_CHARS,
    BodyLimit,
    check_text_sizes,
    task_number,
)

HERE = Path(__file__).parent
SESSION_COOKIE = "rlhfkit_studio"
SESSION_MAX_AGE_S = 12 * 3600
SECRET_KEY_MIN = 16
SECURITY_HEADERS = {
    # Belt and braces for the autoescaping: no inline or foreign script could run anyway.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def create_app(
    store: Store,
    *,
    secret_key: str,
    campaign: str | None = None,
    secure_cookie: bool = False,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_text_chars: int = MAX_TEXT_CHARS,
) -> FastAPI:
    """The studio over ``store``. ``secret_key`` signs session cookies (keep it secret and
    stable: changing it signs everyone out); ``campaign`` fixes the campaign, None lets each
    annotator pick one; ``secure_cookie`` marks the session cookie Secure, so browsers send it
    over HTTPS only (turn it on behind an HTTPS proxy). ``max_body_bytes`` caps a request's
    body (413 over it) and ``max_text_chars`` each text of a label (422)."""
    if not isinstance(secret_key, str) or len(secret_key) < SECRET_KEY_MIN:
        raise ConfigError(
            f"secret_key must be a string of {SECRET_KEY_MIN}+ characters: make "
            "one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    for name, limit in (("max_body_bytes", max_body_bytes), ("max_text_chars", max_text_chars)):
        if type(limit) is not int or limit < 1:
            raise ConfigError(f"{name} = {limit!r}: give a whole number of 1 or more")
    if campaign is not None:
        store.campaign_settings(campaign)  # fails now, naming the known ones, if there is none
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # No /docs: Swagger UI loads from a CDN, and the studio must work offline.
    app = FastAPI(title="rlhfkit feedback studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = Studio(store, campaign, LoginLimiter(), templates, PasswordChecks())
    app.state.max_text_chars = max_text_chars
    # inside the session middleware, so that its 413 page can carry the session's CSRF token
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, refuse=_refuse_body)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key,
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_S,
        same_site="lax",  # cookie always HttpOnly
        https_only=secure_cookie,
    )
    app.middleware("http")(_security_headers)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)
    app.include_router(admin.router)
    app.add_exception_handler(NotSignedIn, _not_signed_in)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(NoCampaign, _no_campaign)
    for error in ERROR_STATUS:
        app.add_exception_handler(error, _store_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    return app


router = APIRouter()


# --- signing in ----------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request) -> Response:
    try:
        signed_in(request)  # a stale session is cleared here
    except NotSignedIn:
        return page(request, "login.html")
    return see_other("/")


@router.post("/login")
async def login(request: Request, form: CheckedForm) -> Response:
    """Async, so that sign-ins turned away (limited, or no check slot free) cost no worker
    thread: only a password check (``_check_password``) runs in one."""
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    address = request.client.host if request.client else "unknown"
    shared = studio(request)
    wait_s, who = shared.limiter.retry_after(name, address), None  # before any hashing
    if not wait_s:
        try:
            wait_s, who = await shared.password_checks.run(
                lambda: _check_password(shared, name, address, password)
            )
        except Busy:
            return page(
                request,
                "login.html",
                status=503,
                headers={"Retry-After": "5"},
                error="the server is busy checking other sign-ins: try again in a few seconds",
            )
    if wait_s:
        return page(
            request,
            "login.html",
            status=429,
            headers={"Retry-After": str(wait_s)},
            error=f"too many failed attempts: try again in {wait_s} seconds",
        )
    if who is None:
        return page(request, "login.html", status=401, error="wrong name or password")
    request.session.clear()  # a fresh CSRF token for the new session
    request.session.update(user=who.name, epoch=who.session_epoch)
    return see_other("/")


def _check_password(
    shared: Studio, name: str, address: str, password: str
) -> tuple[int, AnnotatorInfo | None]:
    """(seconds to wait, 0 if none; the account if the password is right). Asks the limiter
    again: attempts that passed it together before any failed are counted now. An unknown
    name is checked too (against a dummy hash), so it takes as long as a known one."""
    wait_s = shared.limiter.retry_after(name, address)
    if wait_s:
        return wait_s, None
    who = shared.store.get_annotator(name) if name else None
    if not verify_password(who.password_hash if who else None, password):
        shared.limiter.failed(name, address)
        return 0, None
    shared.limiter.succeeded(name, address)
    return 0, who


@router.post("/logout")
def logout(request: Request, who: SignedIn, form: CheckedForm) -> Response:
    """Ends the account's sessions everywhere: a signed cookie cannot be recalled, so its
    epoch is retired instead."""
    studio(request).store.end_sessions(who.name)
    request.session.clear()
    return see_other("/login")


@router.get("/")
def home(request: Request, who: SignedIn) -> Response:
    return see_other("/label")


@router.get("/campaigns")
def campaigns_page(request: Request, who: SignedIn) -> Response:
    if studio(request).campaign is not None:
        return see_other("/label")
    return page(request, "campaigns.html", who=who)


@router.post("/campaigns")
def choose_campaign(request: Request, who: SignedIn, form: CheckedForm) -> Response:
    name = str(form.get("campaign", "")).strip()
    if studio(request).campaign is None:
        try:
            studio(request).store.campaign_settings(name)
        except NotFoundError:
            return page(
                request,
                "campaigns.html",
                status=404,
                who=who,
                error=f"there is no campaign {name!r}: check the name you were given",
            )
        request.session["campaign"] = name
    return see_other("/label")


# --- labelling -----------------------------------------------------------------------------------


@router.get("/label")
def label_page(request: Request, who: SignedIn) -> Response:
    return _label_page(request, who, current_campaign(request))


@router.post("/label")
def submit(request: Request, who: SignedIn, form: CheckedForm) -> Response:
    campaign = current_campaign(request)
    task_id = _task_id(form)
    try:
        payload = check_text_sizes(label_payload(form), request.app.state.max_text_chars)
        studio(request).store.submit_label(
            task_id, who.name, str(form.get("request_id", "")), payload, campaign=campaign
        )
    except (PayloadError, ConflictError, NotAllowedError) as error:
        return _label_page(
            request, who, campaign, error=str(error), status=ERROR_STATUS[type(error)], typed=form
        )
    return see_other("/label")


@router.post("/skip")
def skip(request: Request, who: SignedIn, form: CheckedForm) -> Response:
    studio(request).store.skip(_task_id(form), who.name, campaign=current_campaign(request))
    return see_other("/label")


@router.post("/undo")
def undo(request: Request, who: SignedIn, form: CheckedForm) -> Response:
    undone = studio(request).store.undo_last(who.name, current_campaign(request))
    request.session["notice"] = (
        "nothing to undo"
        if undone is None
        else f"took back your label on task {undone.task_id}: it will be offered again"
    )
    return see_other("/label")


def _label_page(
    request: Request,
    who: AnnotatorInfo,
    campaign: str,
    *,
    error: str = "",
    status: int = 200,
    typed: Mapping[str, Any] | None = None,
) -> Response:
    store = studio(request).store
    task = store.next_task(campaign, who.name)
    mine = _my_progress(store, campaign, who.name)
    typed = typed if task and typed and _task_id(typed, quiet=True) == task.task_id else {}
    return page(
        request,
        "label.html",
        status=status,
        who=who,
        campaign=campaign,
        task=task,
        progress=mine,
        request_id=str(uuid.uuid4()),
        flags=FLAGS,
        error=error,
        typed=typed,
        rank_keys=_rank_keys(task),
    )


# --- JSON API ------------------------------------------------------------------------------------


@router.get("/api/next")
def api_next(request: Request, who: SignedIn) -> JSONResponse:
    store, campaign = studio(request).store, current_campaign(request)
    task = store.next_task(campaign, who.name)
    return JSONResponse(
        {
            "task": None if task is None else asdict(task),
            "progress": _my_progress(store, campaign, who.name),
            "request_id": str(uuid.uuid4()),
            "csrf_token": csrf_token(request.session),
        }
    )


@router.post("/api/label")
def api_label(request: Request, body: dict[str, Any], who: SignedInWithHeader) -> JSONResponse:
    """Body: ``{"task_id": 3, "request_id": "...", "label": {"choice": "A"}}``; answers the
    label's id and whether this request created it (False for a repeat). Only the task that
    ``/api/next`` offered may be labelled (``Store.submit_label``)."""
    task_id = task_number(body.get("task_id")) if type(body.get("task_id")) is int else None
    if task_id is None:
        raise Refused(
            400,
            f"task_id {body.get('task_id')!r} is not a task number: give the "
            "integer task_id that GET /api/next answered",
        )
    label_id, created = studio(request).store.submit_label(
        task_id,
        who.name,
        body.get("request_id"),
        check_text_sizes(body.get("label"), request.app.state.max_text_chars),
        campaign=current_campaign(request),
    )
    return JSONResponse({"label_id": label_id, "created": created}, 201 if created else 200)


# --- helpers -------------------------------------------------------------------------------------


def _task_id(form: Mapping[str, Any], quiet: bool = False) -> int | None:
    value = str(form.get("task_id", ""))
    task_id = task_number(value)
    if task_id is not None or quiet:
        return task_id
    raise Refused(
        400, f"task_id {value!r} is not a task number (ASCII digits, below 2**63): reload the page"
    )


def _my_progress(store: Store, campaign: str, annotator: str) -> dict[str, int]:
    mine = next(row for row in store.progress(campaign).annotators if row.annotator == annotator)
    return {"labelled": mine.labelled, "skipped": mine.skipped, "remaining": mine.remaining}


def _rank_keys(task: TaskView | None) -> list[str]:
    """The key that puts each output next in a ranking: 1..9 (more outputs need the menus)."""
    return [str(i + 1) if i < 9 else "" for i in range(len(task.outputs) if task else 0)]


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _security_headers(request: Request, call_next: Any) -> Response:
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _error(request: Request, status: int, reason: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": reason}, status)
    return page(request, "error.html", status=status, reason=reason)


async def _not_signed_in(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": "sign in first: POST /login"}, 401)
    return see_other("/login")


async def _refused(request: Request, exc: Exception) -> Response:
    return _error(request, exc.status, exc.reason)


async def _no_campaign(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": "pick a campaign first: POST /campaigns"}, 409)
    return see_other("/campaigns")


async def _store_error(request: Request, exc: Exception) -> Response:
    return _error(request, ERROR_STATUS[type(exc)], str(exc))


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """FastAPI's check of a body or path parameter, as a one-line reason in the API's form."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ())) or "the request"
    return _error(
        request,
        422,
        f"{where}: {first.get('msg', 'is not valid')}; send "
        "what the route documents (a JSON object for /api/label)",
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    response = _error(request, exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


def _refuse_body(request: Request, reason: str) -> Response:
    return _error(request, 413, reason)
