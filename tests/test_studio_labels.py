"""The studio's label routes and store under attack (issue 25): what a client posts cannot label
another campaign's task, an unoffered one or one past its count; bodies, texts and ids are
checked at the edge with a 4xx, never a 500; concurrent annotators are never offered one place
twice (SQLite and PostgreSQL); a failed ``label init`` leaves no campaign behind."""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter

import pytest
from fastapi.testclient import TestClient

import test_feedback_store
from rlhfkit.cli import main
from rlhfkit.feedback import migrations
from rlhfkit.feedback import store as feedback_store
from rlhfkit.feedback.store import ConflictError, open_store
from rlhfkit.feedback.web import create_app
from rlhfkit.feedback.web.auth import hash_password
from test_feedback_store import _pairs, _people, _sql

# the store tests' databases: a SQLite file and a PostgreSQL database for each test
postgres_server = test_feedback_store.postgres_server
db_url, store = test_feedback_store.db_url, test_feedback_store.store

SECRET = "test-secret-key-0123456789"
PASSWORDS = {"ada": "ada-password-1", "bob": "bob-password-1"}
HASHES = {name: hash_password(password) for name, password in PASSWORDS.items()}  # once: slow
BIG_ID = 2**63  # one past the largest signed 64-bit id


@pytest.fixture
def studio_store(tmp_path):
    """Two campaigns, c (3 pairwise tasks and a critique task) and d (2 pairwise tasks);
    ada is an admin, bob an annotator."""
    with open_store(tmp_path / "feedback.db") as opened:
        opened.add_annotator("ada", HASHES["ada"], is_admin=True)
        opened.add_annotator("bob", HASHES["bob"])
        for campaign, n in (("c", 3), ("d", 2)):
            opened.create_campaign(campaign, task_kinds=("pairwise", "critique"))
            for i in range(n):
                prompt = opened.add_prompt(campaign, f"{campaign} prompt {i}")
                outputs = [
                    opened.add_output(
                        prompt, f"{campaign} answer {i}{side}", model="m", model_hash="h", seed=i
                    )
                    for side in "ab"
                ]
                opened.add_task(campaign, "pairwise", outputs)
        yield opened


def _client(store, **kwargs) -> TestClient:
    return TestClient(
        create_app(store, secret_key=SECRET, campaign="c", **kwargs), follow_redirects=False
    )


def _signed_in(store, name="bob", **kwargs) -> TestClient:
    client = _client(store, **kwargs)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    answer = client.post(
        "/login", data={"csrf_token": token, "name": name, "password": PASSWORDS[name]}
    )
    assert answer.status_code == 303
    return client


def _offered(client: TestClient) -> tuple[int, dict[str, str], dict[str, str]]:
    """GET /api/next: the task offered, a fresh request body base, the CSRF header."""
    body = client.get("/api/next").json()
    return (
        body["task"]["task_id"],
        {"request_id": body["request_id"]},
        {"X-CSRF-Token": body["csrf_token"]},
    )


def _form(client: TestClient) -> dict[str, str]:
    """The hidden fields of the labelling form now shown."""
    html = client.get("/label").text
    return {
        name: re.search(rf'name="{name}" value="([^"]+)"', html).group(1)
        for name in ("csrf_token", "task_id", "request_id")
    }


def _task_ids(store, campaign: str) -> list[int]:
    return [details.task.task_id for details in _all_details(store, campaign)]


def _all_details(store, campaign: str):
    details = [store.task_details(campaign)]
    while details[-1].next is not None:
        details.append(store.task_details(campaign, details[-1].next))
    return details


def _is_html(response) -> bool:
    return response.headers["content-type"].startswith("text/html")


# --- 1. only the task offered, in the campaign served ---------------------------------------------


def test_a_task_of_another_campaign_is_404_and_nothing_is_stored(studio_store):
    client = _signed_in(studio_store)
    _, base, headers = _offered(client)
    other = _task_ids(studio_store, "d")[0]
    answer = client.post(
        "/api/label", json={**base, "task_id": other, "label": {"choice": "A"}}, headers=headers
    )
    assert answer.status_code == 404 and "campaign 'c' has no such task" in answer.json()["error"]
    form = _form(client)
    skipped = client.post("/skip", data={**form, "task_id": str(other)})
    assert skipped.status_code == 404 and _is_html(skipped)
    labelled = client.post("/label", data={**form, "task_id": str(other), "choice": "B"})
    assert labelled.status_code == 404 and _is_html(labelled)
    assert studio_store.label_records("d") == []
    assert [row.skipped for row in studio_store.progress("d").annotators] == [0, 0]


def test_a_task_never_offered_cannot_be_labelled_or_skipped(studio_store):
    client = _signed_in(studio_store)
    offered, base, headers = _offered(client)
    unoffered = next(task for task in _task_ids(studio_store, "c") if task != offered)
    answer = client.post(
        "/api/label", json={**base, "task_id": unoffered, "label": {"choice": "A"}}, headers=headers
    )
    assert answer.status_code == 403 and "was not offered to 'bob'" in answer.json()["error"]
    form = _form(client)
    for path, extra in (("/label", {"choice": "A"}), ("/skip", {})):
        refused = client.post(path, data={**form, **extra, "task_id": str(unoffered)})
        assert refused.status_code == 403 and _is_html(refused), path
        assert "was not offered to &#39;bob&#39;" in refused.text
    assert studio_store.label_records("c") == []
    assert studio_store.progress("c").annotators[1].skipped == 0
    # the offered one still goes through
    done = client.post(
        "/api/label", json={**base, "task_id": offered, "label": {"choice": "A"}}, headers=headers
    )
    assert done.status_code == 201


def test_counts_cannot_be_stuffed_past_required_gold_or_a_second_label(studio_store):
    ada, bob = _signed_in(studio_store, "ada"), _signed_in(studio_store, "bob")
    task, base, headers = _offered(ada)
    assert (
        ada.post(
            "/api/label", json={**base, "task_id": task, "label": {"choice": "A"}}, headers=headers
        ).status_code
        == 201
    )
    # the task has its one label: bob may not add a second, ada not relabel it
    _, base, headers = _offered(bob)
    full = bob.post(
        "/api/label", json={**base, "task_id": task, "label": {"choice": "B"}}, headers=headers
    )
    assert full.status_code == 403
    _, base, headers = _offered(ada)
    again = ada.post(
        "/api/label", json={**base, "task_id": task, "label": {"choice": "B"}}, headers=headers
    )
    assert again.status_code == 409 and "already labelled" in again.json()["error"]
    # a gold task is everyone's once, but only when it is offered
    offered, base, headers = _offered(bob)
    gold = next(t for t in _task_ids(studio_store, "c") if t not in (task, offered))
    studio_store.set_gold("c", {gold: {"choice": "A"}})
    stuffed = bob.post(
        "/api/label", json={**base, "task_id": gold, "label": {"choice": "A"}}, headers=headers
    )
    assert stuffed.status_code == 403 and "was not offered" in stuffed.json()["error"]
    assert Counter(r.task_id for r in studio_store.label_records("c")) == {task: 1}


def test_label_and_skip_refusals_in_the_store(store):
    tasks = _pairs(store, n=3)
    _people(store, "ada", "bob")
    offered = store.next_task("c", "ada").task_id
    other = next(task for task in tasks if task != offered)
    with pytest.raises(feedback_store.NotAllowedError, match="was not offered to 'ada'"):
        store.submit_label(other, "ada", "r1", {"choice": "A"}, campaign="c")
    with pytest.raises(feedback_store.NotAllowedError, match="was not offered to 'ada'"):
        store.skip(other, "ada", campaign="c")
    store.skip(offered, "ada", campaign="c")
    store.skip(offered, "ada", campaign="c")  # twice: harmless
    with pytest.raises(feedback_store.NotAllowedError, match="'ada' skipped it"):
        store.submit_label(offered, "ada", "r2", {"choice": "A"}, campaign="c")
    assert store.label_records("c") == []


def test_an_expired_hold_frees_the_task_and_a_late_label_is_refused(store):
    _pairs(store, n=1)
    _people(store, "ada", "bob")
    held = store.next_task("c", "ada", hold_s=0)  # expires at once: ada walked away
    assert store.next_task("c", "bob").task_id == held.task_id
    with pytest.raises(feedback_store.NotAllowedError, match="already has the 1 label"):
        store.submit_label(held.task_id, "ada", "late", {"choice": "A"}, campaign="c")
    assert store.submit_label(held.task_id, "bob", "b1", {"choice": "B"}, campaign="c")[1]
    assert store.next_task("c", "ada") is None


# --- 7. assignment is atomic --------------------------------------------------------------------


def test_concurrent_next_task_never_offers_one_place_to_two_annotators(store):
    tasks = _pairs(store, n=3)  # three tasks of one place each
    names = [f"annotator-{n}" for n in range(12)]
    _people(store, *names)
    start, offered, errors = threading.Barrier(len(names)), {}, []

    def ask(name: str) -> None:
        try:
            start.wait()
            task = store.next_task("c", name)
            offered[name] = task and task.task_id
        except Exception as error:  # reported below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=ask, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    given = [task for task in offered.values() if task is not None]
    assert sorted(given) == sorted(tasks)  # each place to one annotator; the rest get None


def test_annotators_labelling_at_once_never_exceed_required(store, db_url):
    tasks = _pairs(store, n=12, overlap=0.25)  # 3 tasks need 2 annotators, 9 need 1
    names = [f"annotator-{n}" for n in range(8)]
    _people(store, *names)
    errors = []

    def work(name: str) -> None:
        rng = random.Random(name)
        try:
            while (task := store.next_task("c", name)) is not None:
                store.submit_label(
                    task.task_id, name, f"{name}-{task.task_id}", {"choice": rng.choice("AB")}
                )
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    required = dict(_sql(db_url, "SELECT id, required FROM tasks"))
    labels = Counter(record.task_id for record in store.label_records("c"))
    assert labels == {task: required[task] for task in tasks}  # every place filled, none twice


def test_a_database_of_the_previous_version_gets_the_reservations_table(db_url, monkeypatch):
    with monkeypatch.context() as patch:  # made by the rlhfkit before this change
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:-1])
        with open_store(db_url) as old:
            _pairs(old, n=2)
            _people(old, "ada")
    _sql(db_url, "DROP TABLE reservations")  # new tables come from the models: not in the old
    with open_store(db_url) as upgraded:
        task = upgraded.next_task("c", "ada")
        assert upgraded.submit_label(task.task_id, "ada", "r", {"choice": "A"}, campaign="c")[1]
    assert _sql(db_url, "SELECT version FROM schema_version") == [(migrations.latest_version(),)]


# --- 5. sizes ----------------------------------------------------------------------------------


def test_a_body_over_the_limit_gets_413_before_anything_is_stored(studio_store):
    client = _signed_in(studio_store, max_body_bytes=10_000)
    task, base, headers = _offered(client)
    huge = {**base, "task_id": task, "label": {"choice": "A", "critique": "x" * 20_000}}
    answer = client.post("/api/label", json=huge, headers=headers)
    assert answer.status_code == 413 and "--max_body_bytes" in answer.json()["error"]
    form = _form(client)
    page = client.post("/label", data={**form, "choice": "A", "critique": "x" * 20_000})
    assert page.status_code == 413 and _is_html(page) and "at most 10,000" in page.text

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b"y" * 4_000

    chunked = client.post(
        "/api/label", content=chunks(), headers={**headers, "content-type": "application/json"}
    )
    assert chunked.status_code == 413 and "over 10,000 bytes" in chunked.json()["error"]
    assert studio_store.label_records("c") == []


def test_a_text_over_the_limit_gets_422_naming_the_field(studio_store):
    client = _signed_in(studio_store, max_text_chars=100)
    task, base, headers = _offered(client)
    long = {**base, "task_id": task, "label": {"choice": "A", "critique": "y" * 101}}
    answer = client.post("/api/label", json=long, headers=headers)
    assert answer.status_code == 422
    assert "'critique' is 101 characters" in answer.json()["error"]
    page = client.post("/label", data={**_form(client), "choice": "A", "critique": "y" * 101})
    assert page.status_code == 422 and _is_html(page) and "--max_text_chars" in page.text
    ok = client.post(
        "/api/label",
        json={**long, "label": {"choice": "A", "critique": "y" * 100}},
        headers=headers,
    )
    assert ok.status_code == 201


def test_create_app_checks_the_limits(studio_store):
    with pytest.raises(Exception, match="max_text_chars = 0: give a whole number"):
        _client(studio_store, max_text_chars=0)


# --- 6. ids and text at the edge -------------------------------------------------------------


@pytest.mark.parametrize("task_id", [str(BIG_ID), "²", "١", "0"])
def test_a_form_task_id_that_is_not_an_ascii_64_bit_number_gets_400(studio_store, task_id):
    client = _signed_in(studio_store)
    form = _form(client)
    for path, extra in (("/label", {"choice": "A"}), ("/skip", {})):
        answer = client.post(path, data={**form, **extra, "task_id": task_id})
        assert answer.status_code == 400 and _is_html(answer), path
        assert "is not a task number" in answer.text
    assert studio_store.label_records("c") == []


@pytest.mark.parametrize("task_id", [BIG_ID, 2**70, -1, 0, True, "1", 1.0, None])
def test_a_json_task_id_that_is_not_a_64_bit_integer_gets_400(studio_store, task_id):
    client = _signed_in(studio_store)
    _, base, headers = _offered(client)
    answer = client.post(
        "/api/label", json={**base, "task_id": task_id, "label": {"choice": "A"}}, headers=headers
    )
    assert answer.status_code == 400 and "is not a task number" in answer.json()["error"]


def test_admin_task_numbers_get_4xx_not_500(studio_store):
    client = _signed_in(studio_store, "ada")
    for query in ("²", "١", str(BIG_ID)):
        answer = client.get(f"/admin/tasks?task={query}")
        assert answer.status_code == 400 and _is_html(answer), query
    assert client.get(f"/admin/tasks/{BIG_ID}").status_code == 404
    assert client.get("/admin/tasks/%D9%A1").status_code == 422


@pytest.mark.parametrize("rating", ["²", "١", "٧"])
def test_a_rating_in_other_digits_is_refused(tmp_path, rating):
    with open_store(tmp_path / "feedback.db") as opened:
        opened.add_annotator("bob", HASHES["bob"])
        opened.create_campaign("c", task_kinds=("rating",))
        prompt = opened.add_prompt("c", "p")
        opened.add_task("c", "rating", [opened.add_output(prompt, "o", model="m", model_hash="h")])
        client = _signed_in(opened)
        answer = client.post("/label", data={**_form(client), "rating": rating})
        assert answer.status_code == 422 and "is not on the scale" in answer.text
        assert opened.label_records("c") == []


def test_a_lone_surrogate_in_a_critique_gets_422(studio_store):
    client = _signed_in(studio_store)
    task, base, headers = _offered(client)
    for critique in ("\ud800", "fine\udfff"):
        body = json.dumps({**base, "task_id": task, "label": {"choice": "A", "critique": critique}})
        answer = client.post(
            "/api/label", content=body, headers={**headers, "content-type": "application/json"}
        )
        assert answer.status_code == 422 and "surrogate" in answer.json()["error"]
    assert studio_store.label_records("c") == []


def test_a_body_that_is_not_an_object_gets_the_apis_json_error(studio_store):
    client = _signed_in(studio_store)
    _, _, headers = _offered(client)
    for body in (b"[]", b"{not json", b'"text"'):
        answer = client.post(
            "/api/label", content=body, headers={**headers, "content-type": "application/json"}
        )
        assert answer.status_code in (400, 422) and set(answer.json()) == {"error"}, body


# --- 8. what errors say, and init all or nothing ------------------------------------------------


def test_a_reused_request_id_names_no_other_label_or_task(store):
    first, second = _pairs(store, n=2)
    _people(store, "ada", "bob")
    store.submit_label(first, "ada", "shared-id", {"choice": "A"})
    with pytest.raises(ConflictError) as refused:
        store.submit_label(second, "bob", "shared-id", {"choice": "B"})
    message = str(refused.value)
    assert message == (
        "request_id 'shared-id' is already used: send a new request_id with each submission"
    )


def test_a_failed_import_leaves_no_campaign_and_a_rerun_works(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = [
        {"prompt": "Say hi", "completions": ["hi", "hello"]},
        {"prompt": "Count", "completions": ["1 2 3", "one \x00 two"]},
    ]  # NUL: refused
    path = tmp_path / "outputs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["label", "init", "--campaign", "c", "--import_file", str(path)]) != 0
    assert "NUL" in capsys.readouterr().err
    rows[1]["completions"][1] = "one two"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["label", "init", "--campaign", "c", "--import_file", str(path)]) == 0
    with open_store(tmp_path / "campaigns" / "c" / "feedback.db") as opened:
        assert [text for _, text, _ in opened.campaign_outputs("c")] == ["Say hi", "Count"]
