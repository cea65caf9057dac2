"""The studio's admin pages: progress, agreement and gold accuracy, exports, accounts, and the
campaign's overlap ratio and gold tasks.

    GET  /admin                          progress per annotator, agreement, gold accuracy
    GET  /admin/export?as=pairs|...      a JSONL download (``export.export_rows``)
         ...&pseudonymise=1              ... with annotators as pseudonyms (``privacy``)
    POST /admin/annotators               a new account
    POST /admin/password                 a new password for an account (ends its sessions)
    POST /admin/overlap                  a new overlap ratio (``Store.set_overlap``)
    GET  /admin/tasks[?task=N]           task N (default: the first) as annotators see it
    GET  /admin/tasks/N                  ... with its gold answer, and a form to set it
    POST /admin/tasks/N/gold             make it gold with the posted answer, or plain again

Every route needs an admin's session and every POST the session's CSRF token (``deps``).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rlhfkit.errors import ConfigError
from rlhfkit.feedback.agreement import agreement_report
from rlhfkit.feedback.export import EXPORTS, export_rows
from rlhfkit.feedback.payload import GOLD_KINDS, PayloadError
from rlhfkit.feedback.privacy import campaign_records
from rlhfkit.feedback.store import ConflictError, NotFoundError
from rlhfkit.feedback.views import AnnotatorInfo
from rlhfkit.feedback.web.auth import MIN_PASSWORD, hash_password, password_problem
from rlhfkit.feedback.web.deps import (
    ERROR_STATUS,
    Admin,
    CheckedForm,
    Refused,
    current_campaign,
    page,
    see_other,
    studio,
)
from rlhfkit.feedback.web.forms import label_payload
from rlhfkit.feedback.web.limits import task_number

router = APIRouter()


@router.get("/admin")
def admin_page(request: Request, who: Admin) -> Response:
    return _admin_page(request, who)


@router.get("/admin/export")
def download(request: Request, who: Admin) -> Response:
    form = request.query_params.get("as", "")
    if form not in EXPORTS:
        raise Refused(400, f"export as {form!r}: choose one of {', '.join(EXPORTS)}")
    pseudonymous = request.query_params.get("pseudonymise", "")
    if pseudonymous not in ("", "0", "1"):
        raise Refused(
            400,
            f"pseudonymise={pseudonymous!r}: give 1 (annotators as pseudonyms, "
            "dates instead of times) or 0",
        )
    store, campaign = studio(request).store, current_campaign(request)
    records = campaign_records(store, campaign, pseudonymous=pseudonymous == "1").records
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in export_rows(records, form)]
    suffix = "-pseudonymised" if pseudonymous == "1" else ""
    filename = f"{campaign}-{form}{suffix}.jsonl".replace('"', "")
    return Response(
        "".join(lines),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post("/admin/annotators")
def add_annotator(request: Request, who: Admin, form: CheckedForm) -> Response:
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    problem = password_problem(password)
    if problem:
        return _admin_page(request, who, status=422, error=f"password: {problem}")
    try:
        studio(request).store.add_annotator(
            name, hash_password(password), is_admin=form.get("is_admin") == "on"
        )
    except (PayloadError, ConflictError) as error:
        return _admin_page(request, who, status=ERROR_STATUS[type(error)], error=str(error))
    request.session["notice"] = f"added annotator {name!r}"
    return see_other("/admin")


@router.post("/admin/password")
def set_password(request: Request, who: Admin, form: CheckedForm) -> Response:
    """A new password for the named account; its sessions end, so a leaked password or
    cookie stops working. An admin who changes their own keeps this session."""
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    problem = password_problem(password)
    if problem:
        return _admin_page(request, who, status=422, error=f"password: {problem}")
    try:
        epoch = studio(request).store.set_password(name, hash_password(password))
    except NotFoundError as error:
        return _admin_page(request, who, status=404, error=str(error))
    if name == who.name:
        request.session["epoch"] = epoch
    request.session["notice"] = f"new password for {name!r}: their other sessions have ended"
    return see_other("/admin")


@router.post("/admin/overlap")
def set_overlap(request: Request, who: Admin, form: CheckedForm) -> Response:
    try:
        overlap = float(str(form.get("overlap", "")))
        annotators = int(str(form.get("overlap_annotators", "")))
        unlabelled, items = studio(request).store.set_overlap(
            current_campaign(request), overlap, annotators
        )
    except (ValueError, ConfigError) as error:
        reason = (
            "give the overlap as a fraction 0..1 and the annotators as a whole number"
            if isinstance(error, ValueError)
            else str(error)
        )
        return _admin_page(request, who, status=422, error=reason)
    request.session["notice"] = (
        f"overlap set to {overlap:g}: of the {unlabelled} tasks nobody "
        f"has labelled yet, {items} now go to {annotators} annotators"
    )
    return see_other("/admin")


@router.get("/admin/tasks")
def find_task(request: Request, who: Admin) -> Response:
    number = request.query_params.get("task", "").strip()
    if number and task_number(number) is None:
        raise Refused(
            400, f"task {number!r} is not a task number: give a whole number in ASCII digits"
        )
    details = studio(request).store.task_details(
        current_campaign(request), task_number(number) if number else None
    )
    return see_other(f"/admin/tasks/{details.task.task_id}")


@router.get("/admin/tasks/{task_id}")
def task_page(request: Request, who: Admin, task_id: int) -> Response:
    return _task_page(request, who, task_id)


@router.post("/admin/tasks/{task_id}/gold")
def set_gold(request: Request, who: Admin, form: CheckedForm, task_id: int) -> Response:
    try:
        answer = None if form.get("clear") else label_payload(form)
        studio(request).store.set_gold(current_campaign(request), {task_id: answer})
    except PayloadError as error:
        return _task_page(request, who, task_id, status=422, error=str(error))
    request.session["notice"] = (
        f"task {task_id} is plain again"
        if answer is None
        else f"task {task_id} is gold: labels on it are scored"
    )
    return see_other(f"/admin/tasks/{task_id}")


def _admin_page(
    request: Request, who: AnnotatorInfo, *, status: int = 200, error: str = ""
) -> Response:
    store, campaign = studio(request).store, current_campaign(request)
    report = agreement_report(store.label_records(campaign), store.gold_answers(campaign))
    gold = report.pop("gold_accuracy", {})
    return page(
        request,
        "admin.html",
        status=status,
        who=who,
        campaign=campaign,
        progress=store.progress(campaign),
        report=report,
        gold=gold,
        exports=EXPORTS,
        settings=store.campaign_settings(campaign),
        gold_tasks=store.gold_tasks(campaign),
        error=error,
        min_password=MIN_PASSWORD,
    )


def _task_page(
    request: Request, who: AnnotatorInfo, task_id: int, *, status: int = 200, error: str = ""
) -> Response:
    campaign = current_campaign(request)
    details = studio(request).store.task_details(campaign, task_id)
    return page(
        request,
        "task.html",
        status=status,
        who=who,
        campaign=campaign,
        details=details,
        task=details.task,
        gold=details.gold or {},
        can_be_gold=details.task.kind in GOLD_KINDS,
        error=error,
    )
