"""The feedback studio over HTTP: FastAPI's TestClient against a real SQLite store.

Campaigns are built with the Store API; every route is driven as a browser would (forms with
the CSRF token scraped from the page) or as a script would (the JSON API).
"""

from __future__ import annotations

import json
import re
import threading

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from rlhfkit.config import FeedbackDataCfg
from rlhfkit.data.feedback import load_pairs
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.store import NotFoundError, open_store
from rlhfkit.feedback.web import create_app
from rlhfkit.feedback.web.auth import LoginLimiter, hash_password, verify_password

SECRET = "test-secret-key-0123456789"
PASSWORDS = {"ada": "ada-pass", "bob": "bob-pass"}
HASHES = {name: hash_password(password) for name, password in PASSWORDS.items()}  # once: slow
TRICKY = "\n  <script>alert(1)</script>\n\tindented  & trailing  \n"


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "feedback.db") as opened:
        opened.add_annotator("ada", HASHES["ada"], is_admin=True)
        opened.add_annotator("bob", HASHES["bob"])
        yield opened


def _pairwise(store, campaign="c", n=3, overlap=0.0, texts=None) -> list[int]:
    store.create_campaign(campaign, task_kinds=("pairwise",), overlap=overlap)
    tasks = []
    for i in range(n):
        prompt = store.add_prompt(campaign, f"prompt {i}")
        a, b = texts or (f"answer {i}A", f"answer {i}B")
        outputs = [
            store.add_output(prompt, text, model="m", model_hash="h", seed=seed)
            for seed, text in enumerate((a, b))
        ]
        tasks.append(store.add_task(campaign, "pairwise", outputs))
    return tasks


def _client(store, campaign="c", **kwargs) -> TestClient:
    return TestClient(
        create_app(store, secret_key=SECRET, campaign=campaign, **kwargs), follow_redirects=False
    )


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _field(html: str, name: str) -> str:
    return re.search(rf'name="{name}" value="([^"]+)"', html).group(1)


def _login(client: TestClient, name: str = "bob", password: str | None = None):
    token = _csrf(client.get("/login").text)
    return client.post(
        "/login", data={"csrf_token": token, "name": name, "password": password or PASSWORDS[name]}
    )


def _signed_in(store, name="bob", campaign="c") -> TestClient:
    client = _client(store, campaign)
    assert _login(client, name).status_code == 303
    return client


def _task_form(client: TestClient) -> dict[str, str]:
    """The hidden fields of the labelling form now shown."""
    html = client.get("/label").text
    return {name: _field(html, name) for name in ("csrf_token", "task_id", "request_id")}


# --- signing in ----------------------------------------------------------------------------------


def test_every_route_but_login_and_static_needs_a_session(store):
    _pairwise(store)
    client = _client(store)
    for path in (
        "/",
        "/label",
        "/campaigns",
        "/admin",
        "/admin/export?as=pairs",
        "/admin/tasks",
        "/admin/tasks/1",
    ):
        response = client.get(path)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
    for path in (
        "/label",
        "/skip",
        "/undo",
        "/admin/annotators",
        "/logout",
        "/campaigns",
        "/admin/overlap",
        "/admin/tasks/1/gold",
    ):
        response = client.post(path, data={"task_id": "1", "request_id": "r", "choice": "A"})
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
    assert client.get("/api/next").status_code == 401
    assert client.post("/api/label", json={}).status_code == 401
    assert client.get("/login").status_code == 200
    assert "pre-wrap" in client.get("/static/studio.css").text
    assert client.get("/static/studio.js").status_code == 200
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    assert store.label_records("c") == []


def test_login_sets_an_httponly_lax_cookie_and_logout_clears_it(store):
    _pairwise(store)
    client = _client(store)
    response = _login(client)
    assert (response.status_code, response.headers["location"]) == (303, "/")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert client.get("/label").status_code == 200
    assert client.get("/login").headers["location"] == "/"  # already signed in
    token = _csrf(client.get("/label").text)
    assert client.post("/logout", data={"csrf_token": token}).headers["location"] == "/login"
    assert client.get("/label").headers["location"] == "/login"


def test_wrong_name_and_wrong_password_get_the_same_answer(store):
    client = _client(store, campaign=None)
    wrong_password, no_such_name = _login(client, "bob", "nope"), _login(client, "eve", "nope")
    for response in (wrong_password, no_such_name):
        assert response.status_code == 401
        assert "wrong name or password" in response.text
    assert verify_password(None, "") is False and verify_password("not a hash", "x") is False


def test_login_attempts_are_rate_limited_per_name_and_address(store):
    client = _client(store, campaign=None)
    for _ in range(5):
        assert _login(client, "bob", "guess").status_code == 401
    refused = _login(client, "bob")  # the right password, too late
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 300
    assert "too many failed attempts" in refused.text
    assert _login(client, "ada").status_code == 303  # another name is not locked out


def test_login_limiter_forgets_failures_after_the_window():
    now = [0.0]
    limiter = LoginLimiter(max_failures=2, window_s=60, clock=lambda: now[0])
    limiter.failed("bob", "1.2.3.4")
    now[0] = 10.0
    limiter.failed("bob", "1.2.3.4")
    assert limiter.retry_after("bob", "1.2.3.4") == 50  # until the first failure ages out
    assert limiter.retry_after("bob", "5.6.7.8") == 0
    now[0] = 60.0
    assert limiter.retry_after("bob", "1.2.3.4") == 0
    limiter.failed("bob", "1.2.3.4")
    limiter.succeeded("bob", "1.2.3.4")
    assert limiter.retry_after("bob", "1.2.3.4") == 0


def test_create_app_checks_its_arguments(store):
    with pytest.raises(ConfigError, match="secret_key"):
        create_app(store, secret_key="short")
    with pytest.raises(NotFoundError, match="no campaign 'nope'"):
        create_app(store, secret_key=SECRET, campaign="nope")


# --- CSRF ----------------------------------------------------------------------------------------


def test_posts_without_the_csrf_token_are_refused_and_write_nothing(store):
    _pairwise(store)
    client = _signed_in(store, "ada")
    form = _task_form(client)
    for token in (None, "forged"):
        fields = {**form, "choice": "A", "csrf_token": token}
        fields = {name: value for name, value in fields.items() if value is not None}
        for path in (
            "/label",
            "/skip",
            "/undo",
            "/logout",
            "/campaigns",
            "/admin/annotators",
            "/admin/overlap",
            f"/admin/tasks/{form['task_id']}/gold",
        ):
            assert (
                client.post(
                    path,
                    data={
                        **fields,
                        "name": "eve",
                        "password": "x",
                        "overlap": "1",
                        "overlap_annotators": "3",
                    },
                ).status_code
                == 403
            ), (path, token)
        assert (
            client.post(
                "/api/label",
                json={
                    "task_id": int(form["task_id"]),
                    "request_id": "r1",
                    "label": {"choice": "A"},
                },
                headers={} if token is None else {"X-CSRF-Token": token},
            ).status_code
            == 403
        )
    assert store.label_records("c") == []
    assert store.progress("c").annotators[0].skipped == 0
    assert store.get_annotator("eve") is None
    assert store.gold_answers("c") == {} and store.campaign_settings("c").overlap == 0.0
    fresh = _client(store)  # logging in needs the token of the login page too
    assert fresh.post("/login", data={"name": "bob", "password": "bob-pass"}).status_code == 403


# --- labelling -----------------------------------------------------------------------------------


def test_model_text_is_shown_escaped_with_its_whitespace(store):
    _pairwise(store, n=1, texts=(TRICKY, "fine"))
    store.create_campaign("fix", task_kinds=("correction",))
    prompt = store.add_prompt("fix", TRICKY)
    store.add_task(
        "fix", "correction", [store.add_output(prompt, TRICKY, model="m", model_hash="h")]
    )
    client = _signed_in(store)
    html = client.get("/label").text
    assert "<script>alert(1)</script>" not in html
    assert f'<div class="text">{escape(TRICKY)}</div>' in html
    assert "default-src 'self'" in client.get("/label").headers["content-security-policy"]
    correction = _signed_in(store, campaign="fix").get("/label").text
    # The parser drops one newline after <textarea>: the page adds it, the text keeps its own.
    assert f">\n{escape(TRICKY)}</textarea>" in correction
    assert f'<div class="text">{escape(TRICKY)}</div>' in correction  # the prompt


def test_a_label_is_stored_and_the_next_task_follows(store):
    _pairwise(store, n=3)
    client = _signed_in(store)
    assert "0 labelled · 3 remaining" in client.get("/label").text
    form = _task_form(client)
    response = client.post("/label", data={**form, "choice": "B", "flags": ["unsafe"]})
    assert (response.status_code, response.headers["location"]) == (303, "/label")
    [label] = store.label_records("c")
    assert (label.task_id, label.choice, label.flags) == (int(form["task_id"]), "B", ("unsafe",))
    page = client.get("/label").text
    assert "1 labelled · 2 remaining" in page
    assert _field(page, "task_id") != form["task_id"]
    assert _field(page, "request_id") != form["request_id"]  # a fresh id per rendered form


def test_the_same_request_id_twice_stores_one_label(store):
    _pairwise(store)
    client = _signed_in(store)
    form = {**_task_form(client), "choice": "A"}
    assert client.post("/label", data=form).status_code == 303
    assert client.post("/label", data=form).status_code == 303  # the retry: no error, no row
    assert len(store.label_records("c")) == 1


def test_concurrent_submissions_of_one_request_store_one_label(store):
    _pairwise(store)
    client = _signed_in(store)
    form = {**_task_form(client), "choice": "tie"}
    clients = [
        TestClient(client.app, cookies=client.cookies, follow_redirects=False) for _ in range(6)
    ]
    start, statuses = threading.Barrier(len(clients)), []

    def post(other: TestClient) -> None:
        start.wait()
        statuses.append(other.post("/label", data=form).status_code)

    threads = [threading.Thread(target=post, args=(other,)) for other in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [303] * len(clients)
    assert len(store.label_records("c")) == 1


def test_a_bad_label_shows_the_page_again_and_writes_nothing(store):
    _pairwise(store)
    client = _signed_in(store)
    form = _task_form(client)
    missing = client.post("/label", data={**form, "critique": "kept\r\nhere"})
    assert missing.status_code == 422
    assert "a pairwise label needs choice" in missing.text
    assert ">\nkept\r\nhere</textarea>" in missing.text  # what was typed comes back
    wrong = client.post("/label", data={**form, "choice": "C"})
    assert wrong.status_code == 422 and "is not one of A, B, tie, both_bad" in wrong.text
    assert client.post("/label", data={**form, "task_id": "x", "choice": "A"}).status_code == 400
    assert client.post("/label", data={**form, "task_id": "999", "choice": "A"}).status_code == 404
    assert store.label_records("c") == []


def test_skip_and_undo(store):
    tasks = _pairwise(store, n=2)
    client = _signed_in(store)
    form = _task_form(client)
    assert client.post("/skip", data=form).headers["location"] == "/label"
    page = client.get("/label").text
    assert "0 labelled · 1 remaining · 1 skipped" in page
    other = _field(page, "task_id")
    assert {int(form["task_id"]), int(other)} == set(tasks)
    client.post("/label", data={**_task_form(client), "choice": "A"})
    assert "Nothing left for you to label" in client.get("/label").text
    token = _csrf(client.get("/label").text)
    assert client.post("/undo", data={"csrf_token": token}).headers["location"] == "/label"
    page = client.get("/label").text
    assert f"took back your label on task {other}: it will be offered again" in page
    assert _field(page, "task_id") == other  # offered again
    assert store.label_records("c") == []
    client.post("/undo", data={"csrf_token": token})
    assert "nothing to undo" in client.get("/label").text


def test_every_kind_of_task_through_its_form(store):
    store.create_campaign("k", task_kinds=("ranking", "rating", "critique", "correction"))
    prompt = store.add_prompt("k", "Say hi.")
    out = [store.add_output(prompt, f"hi {i}", model="m", model_hash="h") for i in range(3)]
    store.add_task("k", "ranking", out)
    store.add_task("k", "rating", out[:1])
    store.add_task("k", "critique", out[1:2])
    store.add_task("k", "correction", out[2:])
    answers = {
        "ranking": {"rank_0": "2", "rank_1": "3", "rank_2": "1"},
        "rating": {"rating": "6", "thumbs": "up", "flags": ["off_topic"]},
        "critique": {"critique": "too\r\nshort"},
        "correction": {"correction": "hi there\r\n", "critique": "friendlier"},
    }
    client = _signed_in(store, campaign="k")
    for _ in answers:
        html = client.get("/label").text
        kind = re.search(r'data-kind="(\w+)"', html).group(1)
        form = {name: _field(html, name) for name in ("csrf_token", "task_id", "request_id")}
        assert client.post("/label", data={**form, **answers[kind]}).status_code == 303, kind
    labels = {label.kind: label for label in store.label_records("k")}
    assert labels["ranking"].ranking == (2, 0, 1)
    assert (labels["rating"].rating, labels["rating"].thumbs) == (6.0, True)
    assert labels["rating"].flags == ("off_topic",)
    assert labels["critique"].critique == "too\nshort"
    assert (labels["correction"].correction, labels["correction"].critique) == (
        "hi there\n",
        "friendlier",
    )


def test_a_ranking_that_repeats_a_place_is_refused(store):
    store.create_campaign("k", task_kinds=("ranking",))
    prompt = store.add_prompt("k", "Say hi.")
    store.add_task(
        "k",
        "ranking",
        [store.add_output(prompt, f"hi {i}", model="m", model_hash="h") for i in range(3)],
    )
    client = _signed_in(store, campaign="k")
    response = client.post(
        "/label", data={**_task_form(client), "rank_0": "1", "rank_1": "1", "rank_2": "2"}
    )
    assert response.status_code == 422 and "a different place" in response.text
    assert store.label_records("k") == []


def test_annotators_pick_a_campaign_when_none_is_fixed(store):
    _pairwise(store)
    client = _signed_in(store, campaign=None)
    assert client.get("/label").headers["location"] == "/campaigns"
    assert client.get("/api/next").status_code == 409
    token = _csrf(client.get("/campaigns").text)
    unknown = client.post("/campaigns", data={"csrf_token": token, "campaign": "nope"})
    assert unknown.status_code == 404 and "there is no campaign" in unknown.text
    chosen = client.post("/campaigns", data={"csrf_token": token, "campaign": "c"})
    assert chosen.headers["location"] == "/label"
    assert "0 labelled · 3 remaining" in client.get("/label").text
    assert _signed_in(store).get("/campaigns").headers["location"] == "/label"  # fixed: no pick


# --- admin ---------------------------------------------------------------------------------------


def test_admin_pages_refuse_annotators(store):
    _pairwise(store)
    client = _signed_in(store, "bob")
    token = _csrf(client.get("/label").text)
    assert client.get("/admin").status_code == 403
    assert client.get("/admin/export?as=pairs").status_code == 403
    assert (
        client.post(
            "/admin/annotators", data={"csrf_token": token, "name": "eve", "password": "x"}
        ).status_code
        == 403
    )
    assert store.get_annotator("eve") is None
    task_id = _field(client.get("/label").text, "task_id")
    assert client.get(f"/admin/tasks/{task_id}").status_code == 403
    assert (
        client.post(
            f"/admin/tasks/{task_id}/gold", data={"csrf_token": token, "choice": "A"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/admin/overlap", data={"csrf_token": token, "overlap": "1", "overlap_annotators": "2"}
        ).status_code
        == 403
    )
    assert store.gold_answers("c") == {} and store.campaign_settings("c").overlap == 0.0


def test_admin_sees_progress_and_agreement(store):
    _pairwise(store, n=2, overlap=1.0)  # every task to two annotators
    for name in ("ada", "bob"):
        client = _signed_in(store, name)
        for _ in range(2):
            client.post("/label", data={**_task_form(client), "choice": "A"})
    page = _signed_in(store, "ada").get("/admin").text
    assert re.search(r"<td>bob</td><td>2</td><td>0</td><td>0</td>", page)
    assert "2 of 2 tasks have all their labels; 4 labels in all." in page
    assert "Fleiss" in page and "ada &amp; bob" in page


def test_export_downloads_jsonl_that_load_pairs_reads(store, tmp_path):
    _pairwise(store, n=3)
    client = _signed_in(store, "ada")
    for choice in ("A", "B", "tie"):
        client.post("/label", data={**_task_form(client), "choice": choice})
    response = client.get("/admin/export?as=pairs")
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="c-pairs.jsonl"'
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert len(rows) == 2 and all(row["annotator"] == "ada" for row in rows)  # a tie: no pair
    path = tmp_path / "pairs.jsonl"
    path.write_text(response.text, encoding="utf-8")
    pairs = load_pairs(FeedbackDataCfg(path=str(path), eval_fraction=0.0), "train")
    assert sorted((pair.chosen, pair.rejected) for pair in pairs) == sorted(
        (row["chosen"], row["rejected"]) for row in rows
    )
    for form in ("ratings", "binary", "critiques", "sft"):
        assert client.get(f"/admin/export?as={form}").status_code == 200
    assert client.get("/admin/export?as=csv").status_code == 400


def test_admin_adds_an_annotator_who_can_sign_in(store):
    _pairwise(store)
    client = _signed_in(store, "ada")
    token = _csrf(client.get("/admin").text)
    added = client.post(
        "/admin/annotators", data={"csrf_token": token, "name": "cy", "password": "cy-password"}
    )
    assert added.headers["location"] == "/admin"
    assert "added annotator &#39;cy&#39;" in client.get("/admin").text
    assert not store.get_annotator("cy").is_admin
    assert _login(_client(store), "cy", "cy-password").status_code == 303
    again = client.post(
        "/admin/annotators", data={"csrf_token": token, "name": "cy", "password": "other-password"}
    )
    assert again.status_code == 409 and "already exists" in again.text
    no_password = client.post(
        "/admin/annotators", data={"csrf_token": token, "name": "dee", "password": ""}
    )
    assert no_password.status_code == 422 and store.get_annotator("dee") is None


def test_admin_gives_a_task_a_known_answer_and_sees_accuracy_on_it(store):
    tasks = _pairwise(store, n=3, texts=(TRICKY, "plain"))
    bob = _signed_in(store, "bob")
    for choice in ("A", "B", "A"):
        bob.post("/label", data={**_task_form(bob), "choice": choice})
    client = _signed_in(store, "ada")
    assert client.get("/admin/tasks").headers["location"] == f"/admin/tasks/{tasks[0]}"
    assert (
        client.get(f"/admin/tasks?task={tasks[1]}").headers["location"]
        == f"/admin/tasks/{tasks[1]}"
    )
    page = client.get(f"/admin/tasks/{tasks[1]}").text
    assert str(escape(TRICKY)) in page and "<script>alert" not in page
    assert f'href="/admin/tasks/{tasks[0]}">previous' in page
    assert f'href="/admin/tasks/{tasks[2]}">next' in page
    token = _csrf(page)

    for task_id in tasks:  # the same answer on each: bob's labels are right on two of three
        shown = store.task_details("c", task_id).task.outputs
        answer = "A" if shown[0].text == TRICKY else "B"
        marked = client.post(
            f"/admin/tasks/{task_id}/gold", data={"csrf_token": token, "choice": answer}
        )
        assert marked.headers["location"] == f"/admin/tasks/{task_id}"
    bob_right = sum(
        r.choice == ("A" if r.outputs[0].text == TRICKY else "B") for r in store.label_records("c")
    )
    admin = client.get("/admin").text
    assert re.search(rf"<td>bob</td><td>3</td><td>{bob_right}</td>", admin)
    assert f'href="/admin/tasks/{tasks[0]}">#{tasks[0]}</a>' in admin
    assert 'value="A" required checked' in client.get(f"/admin/tasks/{tasks[0]}").text

    wrong = client.post(f"/admin/tasks/{tasks[0]}/gold", data={"csrf_token": token, "choice": "C"})
    assert wrong.status_code == 422 and "&#39;C&#39; is not one of" in wrong.text
    cleared = client.post(f"/admin/tasks/{tasks[0]}/gold", data={"csrf_token": token, "clear": "1"})
    assert cleared.status_code == 303 and tasks[0] not in store.gold_answers("c")
    assert client.get("/admin/tasks/999").status_code == 404
    assert client.get("/admin/tasks?task=first").status_code == 400


def test_admin_ranks_and_rates_gold_through_the_form(store):
    store.create_campaign("r", task_kinds=("ranking", "rating", "critique"))
    prompt = store.add_prompt("r", "p")
    outputs = [store.add_output(prompt, text, model="m", model_hash="h") for text in "xyz"]
    ranking = store.add_task("r", "ranking", outputs)
    rating = store.add_task("r", "rating", outputs[:1])
    critique = store.add_task("r", "critique", outputs[:1])
    client = _signed_in(store, "ada", campaign="r")
    token = _csrf(client.get(f"/admin/tasks/{ranking}").text)
    client.post(
        f"/admin/tasks/{ranking}/gold",
        data={"csrf_token": token, "rank_0": "2", "rank_1": "3", "rank_2": "1"},
    )
    client.post(
        f"/admin/tasks/{rating}/gold", data={"csrf_token": token, "rating": "6", "thumbs": "up"}
    )
    assert [d.gold for d in store.gold_tasks("r")] == [
        {"ranking": [2, 0, 1]},
        {"rating": 6.0, "thumbs": True},
    ]
    repeated = client.post(
        f"/admin/tasks/{ranking}/gold",
        data={"csrf_token": token, "rank_0": "1", "rank_1": "1", "rank_2": "2"},
    )
    assert (
        repeated.status_code == 422
        and "give each of the 3 outputs a different place" in repeated.text
        and "Known answer" in repeated.text
    )  # the task page again, with the error
    assert "cannot be gold" in client.get(f"/admin/tasks/{critique}").text
    refused = client.post(
        f"/admin/tasks/{critique}/gold", data={"csrf_token": token, "critique": "too long"}
    )
    assert refused.status_code == 422 and store.task_details("r", critique).gold is None


def test_admin_changes_the_overlap_of_tasks_nobody_has_labelled(store):
    tasks = _pairwise(store, n=4)
    bob = _signed_in(store, "bob")
    bob.post("/label", data={**_task_form(bob), "choice": "A"})
    labelled = store.label_records("c")[0].task_id
    client = _signed_in(store, "ada")
    token = _csrf(client.get("/admin").text)
    changed = client.post(
        "/admin/overlap", data={"csrf_token": token, "overlap": "1", "overlap_annotators": "3"}
    )
    assert changed.headers["location"] == "/admin"
    assert (
        "of the 3 tasks nobody has labelled yet, 3 now go to 3 annotators"
        in client.get("/admin").text
    )
    assert {task_id: store.task_details("c", task_id).required for task_id in tasks} == {
        task_id: 1 if task_id == labelled else 3 for task_id in tasks
    }
    for overlap, annotators, message in (
        ("2", "3", "overlap 2.0 is not a fraction"),
        ("half", "3", "give the overlap as a fraction"),
        ("0.5", "1", "overlap_annotators 1: give 2 or more"),
    ):
        refused = client.post(
            "/admin/overlap",
            data={"csrf_token": token, "overlap": overlap, "overlap_annotators": annotators},
        )
        assert refused.status_code == 422 and message in refused.text
    assert store.campaign_settings("c").overlap == 1.0


# --- JSON API ------------------------------------------------------------------------------------


def test_the_json_api_labels_once_per_request_id(store):
    _pairwise(store, n=2)
    client = _signed_in(store)
    body = client.get("/api/next").json()
    assert body["progress"] == {"labelled": 0, "skipped": 0, "remaining": 2}
    assert body["task"]["kind"] == "pairwise" and len(body["task"]["outputs"]) == 2
    label = {
        "task_id": body["task"]["task_id"],
        "request_id": body["request_id"],
        "label": {"choice": "A"},
    }
    headers = {"X-CSRF-Token": body["csrf_token"]}
    first = client.post("/api/label", json=label, headers=headers)
    again = client.post("/api/label", json=label, headers=headers)
    assert (first.status_code, first.json()["created"]) == (201, True)
    assert (again.status_code, again.json()) == (200, {**first.json(), "created": False})
    bad = client.post(
        "/api/label", json={**label, "request_id": "r2", "label": {"x": 1}}, headers=headers
    )
    assert bad.status_code == 422 and "not part of a pairwise label" in bad.json()["error"]
    assert len(store.label_records("c")) == 1
