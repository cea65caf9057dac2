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
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import FormData
from starlette.middleware.sessions import SessionMiddleware

from rlhfkit.errors import ConfigError
from rlhfkit.feedback.payload import PayloadError
from rlhfkit.feedback.records import FLAGS
from rlhfkit.feedback.store import ConflictError, NotFoundError, Store
from rlhfkit.feedback.views import AnnotatorInfo, TaskView
from rlhfkit.feedback.web.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LoginLimiter,
    csrf_ok,
    csrf_token,
    verify_password,
)
from rlhfkit.feedback.web.forms import label_payload

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
ERROR_STATUS = {PayloadError: 422, ConflictError: 409, NotFoundError: 404}


@dataclass(frozen=True)
class Studio:
    """What the routes share: the store, the fixed campaign (or None), the login limiter."""

    store: Store
    campaign: str | None
    limiter: LoginLimiter
    templates: jinja2.Environment


class NotSignedIn(Exception):
    """No valid session: HTML requests go to /login, API requests get 401."""


class Refused(Exception):
    """A request answered with an error status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class NoCampaign(Exception):
    """The session has not picked a campaign yet."""


def create_app(store: Store, *, secret_key: str, campaign: str | None = None) -> FastAPI:
    """The studio over ``store``. ``secret_key`` signs session cookies (keep it secret and
    stable: changing it signs everyone out); ``campaign`` fixes the campaign, None lets each
    annotator pick one."""
    if not isinstance(secret_key, str) or len(secret_key) < SECRET_KEY_MIN:
        raise ConfigError(f"secret_key must be a string of {SECRET_KEY_MIN}+ characters: make "
                          "one with `python -c 'import secrets; print(secrets.token_hex(32))'`")
    if campaign is not None:
        store.campaign_settings(campaign)  # fails now, naming the known ones, if there is none
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                   autoescape=True, undefined=jinja2.StrictUndefined,
                                   trim_blocks=True, lstrip_blocks=True)
    # No /docs: Swagger UI loads from a CDN, and the studio must work offline.
    app = FastAPI(title="rlhfkit feedback studio", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.studio = Studio(store, campaign, LoginLimiter(), templates)
    app.add_middleware(SessionMiddleware, secret_key=secret_key, session_cookie=SESSION_COOKIE,
                       max_age=SESSION_MAX_AGE_S, same_site="lax")  # cookie always HttpOnly
    app.middleware("http")(_security_headers)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)
    from rlhfkit.feedback.web import admin  # it builds on this module's dependencies

    app.include_router(admin.router)
    app.add_exception_handler(NotSignedIn, _not_signed_in)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(NoCampaign, _no_campaign)
    for error in ERROR_STATUS:
        app.add_exception_handler(error, _store_error)
    return app


router = APIRouter()


# --- dependencies --------------------------------------------------------------------------------


def studio(request: Request) -> Studio:
    return request.app.state.studio


def signed_in(request: Request) -> AnnotatorInfo:
    """The signed-in annotator, read afresh (an admin flag or account may have changed)."""
    name = request.session.get("user")
    who = studio(request).store.get_annotator(name) if isinstance(name, str) else None
    if who is None:
        request.session.pop("user", None)
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
        raise Refused(403, "the form's security token is missing or stale: reload the page "
                           "and try again")
    return form


Admin = Annotated[AnnotatorInfo, Depends(admin)]
CheckedForm = Annotated[FormData, Depends(checked_form)]


def signed_in_with_header(request: Request, who: SignedIn) -> AnnotatorInfo:
    """The signed-in annotator of an API call that sent the session's CSRF token."""
    if not csrf_ok(request.session, request.headers.get(CSRF_HEADER)):
        raise Refused(403, f"send the session's CSRF token in the {CSRF_HEADER} header "
                           "(GET /api/next gives it)")
    return who


SignedInWithHeader = Annotated[AnnotatorInfo, Depends(signed_in_with_header)]


def current_campaign(request: Request) -> str:
    chosen = studio(request).campaign or request.session.get("campaign")
    if not isinstance(chosen, str):
        raise NoCampaign()
    return chosen


# --- signing in ----------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request) -> Response:
    if isinstance(request.session.get("user"), str):
        return see_other("/")
    return page(request, "login.html")


@router.post("/login")
def login(request: Request, form: CheckedForm) -> Response:
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    address = request.client.host if request.client else "unknown"
    limiter = studio(request).limiter
    wait_s = limiter.retry_after(name, address)
    if wait_s:
        return page(request, "login.html", status=429, headers={"Retry-After": str(wait_s)},
                    error=f"too many failed attempts: try again in {wait_s} seconds")
    who = studio(request).store.get_annotator(name) if name else None
    if not verify_password(who.password_hash if who else None, password):
        limiter.failed(name, address)
        return page(request, "login.html", status=401, error="wrong name or password")
    limiter.succeeded(name, address)
    request.session.clear()  # a fresh CSRF token for the new session
    request.session["user"] = who.name
    return see_other("/")


@router.post("/logout")
def logout(request: Request, who: SignedIn, form: CheckedForm) -> Response:
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
            return page(request, "campaigns.html", status=404, who=who,
                        error=f"there is no campaign {name!r}: check the name you were given")
        request.session["campaign"] = name
    return see_other("/label")


# --- labelling -----------------------------------------------------------------------------------


@router.get("/label")
def label_page(request: Request, who: SignedIn) -> Response:
    return _label_page(request, who, current_campaign(request))


@router.post("/label")
def submit(request: Request, who: SignedIn, form: CheckedForm) -> Response:
    campaign = current_campaign(request)
    try:
        studio(request).store.submit_label(_task_id(form), who.name,
                                           str(form.get("request_id", "")), label_payload(form))
    except (PayloadError, ConflictError) as error:
        return _label_page(request, who, campaign, error=str(error),
                           status=ERROR_STATUS[type(error)], typed=form)
    return see_other("/label")


@router.post("/skip")
def skip(request: Request, who: SignedIn, form: CheckedForm) -> Response:
    studio(request).store.skip(_task_id(form), who.name)
    return see_other("/label")


@router.post("/undo")
def undo(request: Request, who: SignedIn, form: CheckedForm) -> Response:
    undone = studio(request).store.undo_last(who.name, current_campaign(request))
    request.session["notice"] = ("nothing to undo" if undone is None else
                                 f"took back your label on task {undone.task_id}: it will be "
                                 "offered again")
    return see_other("/label")


def _label_page(request: Request, who: AnnotatorInfo, campaign: str, *, error: str = "",
                status: int = 200, typed: Mapping[str, Any] | None = None) -> Response:
    store = studio(request).store
    task = store.next_task(campaign, who.name)
    mine = _my_progress(store, campaign, who.name)
    typed = typed if task and typed and _task_id(typed, quiet=True) == task.task_id else {}
    return page(request, "label.html", status=status, who=who, campaign=campaign, task=task,
                progress=mine, request_id=str(uuid.uuid4()), flags=FLAGS, error=error,
                typed=typed, rank_keys=_rank_keys(task))


# --- JSON API ------------------------------------------------------------------------------------


@router.get("/api/next")
def api_next(request: Request, who: SignedIn) -> JSONResponse:
    store, campaign = studio(request).store, current_campaign(request)
    task = store.next_task(campaign, who.name)
    return JSONResponse({"task": None if task is None else asdict(task),
                         "progress": _my_progress(store, campaign, who.name),
                         "request_id": str(uuid.uuid4()), "csrf_token": csrf_token(request.session)})


@router.post("/api/label")
def api_label(request: Request, body: dict[str, Any],
              who: SignedInWithHeader) -> JSONResponse:
    """Body: ``{"task_id": 3, "request_id": "...", "label": {"choice": "A"}}``; answers the
    label's id and whether this request created it (False for a repeat)."""
    label_id, created = studio(request).store.submit_label(
        body.get("task_id"), who.name, body.get("request_id"), body.get("label"))
    return JSONResponse({"label_id": label_id, "created": created}, 201 if created else 200)


# --- helpers -------------------------------------------------------------------------------------


def page(request: Request, template: str, *, status: int = 200,
         headers: Mapping[str, str] | None = None, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context``, the session's CSRF token and any notice."""
    context.setdefault("who", None)
    context.setdefault("error", "")
    html = studio(request).templates.get_template(template).render(
        csrf_token=csrf_token(request.session), notice=request.session.pop("notice", ""),
        fixed_campaign=studio(request).campaign is not None, **context)
    return HTMLResponse(html, status_code=status, headers=headers)


def see_other(url: str) -> RedirectResponse:
    """A 303 to ``url``: after a POST, the browser GETs it, so a reload cannot post again."""
    return RedirectResponse(url, status_code=303)


def _task_id(form: Mapping[str, Any], quiet: bool = False) -> int | None:
    value = str(form.get("task_id", ""))
    if value.isdigit():
        return int(value)
    if quiet:
        return None
    raise Refused(400, f"task_id {value!r} is not a task number: reload the page")


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
