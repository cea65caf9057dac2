"""The feedback studio: a web app where people judge model outputs into the feedback store.

from rlhfkit.feedback.web import create_app
app = create_app(store, secret_key=key, campaign="round-1")   # campaign=None: people pick
uvicorn.run(app, host="127.0.0.1", port=8000)

app.py         the app and its labelling routes (FastAPI, server-rendered Jinja2 pages, a
               small JSON API)
admin.py       the admins' routes: progress, agreement, exports, accounts, overlap, gold
deps.py        what both share: the app's state, the signed-in annotator, CSRF-checked
               forms, the campaign, page rendering
auth.py        argon2id passwords, CSRF tokens, the sign-in limits and the bound on
               password checks running at once
forms.py       a posted task form as a label payload
templates/     the pages; static/  their CSS and keyboard shortcuts, served by the app
               (no CDN: it works offline)
"""

from rlhfkit.feedback.web.app import create_app

__all__ = ["create_app"]
