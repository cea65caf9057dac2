"""The feedback store against a real SQLite file and a real PostgreSQL server, same tests.

PostgreSQL comes from a throwaway cluster (``tests/postgres.py``) started once per session;
each test gets its own database. CI provides the server binaries: ``.ci/run`` installs Debian's
``postgresql`` package and sets ``RLHFKIT_REQUIRE_POSTGRES=1``, which turns "binaries missing"
from a skip into a failure.
"""

from __future__ import annotations

import os
import threading

import pytest
from sqlalchemy import create_engine, inspect, text

from postgres import (
    PostgresMissing,
    free_port,
    fresh_database,
    server_binaries,
    throwaway_postgres,
)
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.feedback import migrations
from rlhfkit.feedback.engine import resolve_url
from rlhfkit.feedback.payload import PayloadError
from rlhfkit.feedback.store import ConflictError, NotFoundError, open_store

# --- databases -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """``postgresql://rlhfkit@127.0.0.1:PORT`` of a throwaway cluster (trust auth)."""
    try:
        server_binaries()
    except PostgresMissing as missing:
        if os.environ.get("RLHFKIT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_POSTGRES=1 but {missing}")
        pytest.skip(str(missing))
    with throwaway_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database: a file, or a new database on the test cluster."""
    if request.param == "sqlite":
        yield str(tmp_path / "feedback.db")
        return
    with fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture
def store(db_url):
    with open_store(db_url) as opened:
        yield opened


def _sql(db_url: str, statement: str) -> list[tuple]:
    """Run SQL on the database directly, beside the store (rows for a SELECT)."""
    engine = create_engine(resolve_url(db_url))
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _pairs(store, campaign: str = "c", n: int = 4, *, overlap: float = 0.0) -> list[int]:
    """A pairwise campaign of ``n`` prompts, two outputs each; returns the task ids."""
    store.create_campaign(campaign, task_kinds=("pairwise",), overlap=overlap)
    tasks = []
    for i in range(n):
        prompt = store.add_prompt(campaign, f"prompt {i}")
        outputs = [
            store.add_output(
                prompt, f"answer {i}{side}", model="runs/sft", model_hash="sha256:abc", seed=i
            )
            for side in "ab"
        ]
        tasks.append(store.add_task(campaign, "pairwise", outputs))
    return tasks


def _people(store, *names: str) -> None:
    for name in names:
        store.add_annotator(name, f"hash-of-{name}")


# --- creating, upgrading, connecting -------------------------------------------------------------


def test_open_creates_the_tables_and_reopens_with_the_data(db_url):
    with open_store(db_url) as store:
        _pairs(store, n=1)
    assert _sql(db_url, "SELECT version FROM schema_version") == [(migrations.latest_version(),)]
    with open_store(db_url) as store:
        assert store.campaign_settings("c").task_kinds == ("pairwise",)
        assert store.progress("c").tasks == 1


def _add_email(connection) -> None:
    connection.execute(text("ALTER TABLE annotators ADD COLUMN email VARCHAR(200)"))
    connection.execute(text("UPDATE annotators SET email = name || '@example.org'"))


def test_a_version_1_database_upgrades_with_its_rows(db_url, monkeypatch):
    with open_store(db_url) as store:
        _people(store, "ada")
    latest = migrations.latest_version()
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, _add_email])
    with open_store(db_url) as store:
        assert store.get_annotator("ada").password_hash == "hash-of-ada"
    assert _sql(db_url, "SELECT version FROM schema_version") == [(latest + 1,)]
    assert _sql(db_url, "SELECT name, email FROM annotators") == [("ada", "ada@example.org")]


def test_a_failed_migration_leaves_the_database_as_it_was(db_url, monkeypatch):
    with open_store(db_url) as store:
        _people(store, "ada")

    def add_email_then_fail(connection):
        _add_email(connection)
        raise RuntimeError("migration bug")

    latest = migrations.latest_version()
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, add_email_then_fail])
    with pytest.raises(RuntimeError, match="migration bug"):
        open_store(db_url)
    assert _sql(db_url, "SELECT version FROM schema_version") == [(latest,)]
    engine = create_engine(resolve_url(db_url))
    columns = {column["name"] for column in inspect(engine).get_columns("annotators")}
    engine.dispose()
    assert "email" not in columns


def test_a_database_newer_than_the_code_is_refused(db_url):
    open_store(db_url).close()
    _sql(db_url, "UPDATE schema_version SET version = 99")
    latest = migrations.latest_version()
    with pytest.raises(
        RlhfkitError,
        match=rf"schema version 99, newer than this rlhfkit knows "
        rf"\({latest}\): upgrade rlhfkit",
    ):
        open_store(db_url)


def test_tables_of_another_application_are_not_taken_over(db_url):
    _sql(db_url, "CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)")
    with pytest.raises(RlhfkitError, match="has tables tasks but no schema_version"):
        open_store(db_url)


def test_an_unreachable_database_is_named_with_the_password_masked():
    url = f"postgresql://ada:s3cret-pw@127.0.0.1:{free_port()}/feedback"  # nothing listens
    with pytest.raises(RlhfkitError) as raised:
        open_store(url)
    message = str(raised.value)
    assert (
        "cannot connect to the feedback database postgresql+psycopg://ada:***@127.0.0.1" in message
    )
    assert "s3cret-pw" not in message


def test_a_file_that_is_not_a_database_is_named(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    with pytest.raises(RlhfkitError, match="notes.txt: file is not a database; give the path"):
        open_store(notes)
    with pytest.raises(RlhfkitError, match="cannot create the folder .*notes.txt/feedback.db"):
        open_store(notes / "feedback.db")
    assert notes.read_text() == "not a database\n"


def test_urls(tmp_path):
    assert resolve_url(tmp_path).database == str(tmp_path / "feedback.db")
    assert resolve_url(tmp_path / "votes.db").database == str(tmp_path / "votes.db")
    assert resolve_url(f"sqlite:///{tmp_path}/votes.db").database == f"{tmp_path}/votes.db"
    for given in ("postgres://u:p@h/db", "postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"):
        assert resolve_url(given).drivername == "postgresql+psycopg"
    for bad in ("mysql://u:secret@h/db", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ConfigError, match="is not supported: give a file path") as raised:
            resolve_url(bad)
        assert "secret" not in str(raised.value)


# --- setting up ----------------------------------------------------------------------------------


def test_names_are_unique_and_unknown_names_listed(store):
    _pairs(store, "round-1", n=1)
    _people(store, "ada")
    with pytest.raises(ConflictError, match="campaign 'round-1' already exists"):
        store.create_campaign("round-1")
    with pytest.raises(ConflictError, match="annotator 'ada' already exists"):
        store.add_annotator("ada", "another-hash")
    with pytest.raises(NotFoundError, match="no campaign 'round-2' in .*; known: round-1"):
        store.next_task("round-2", "ada")
    with pytest.raises(NotFoundError, match="no annotator 'bob'"):
        store.next_task("round-1", "bob")
    assert store.get_annotator("bob") is None
    admin = store.add_annotator("root", "h", is_admin=True)
    root = store.get_annotator("root")
    assert (root.annotator_id, root.name, root.password_hash, root.is_admin) == (
        admin,
        "root",
        "h",
        True,
    )
    with pytest.raises(ConfigError, match="overlap 1.5 is not a fraction"):
        store.create_campaign("bad", overlap=1.5)


def test_add_task_checks_its_outputs_kind_and_gold(store):
    store.create_campaign("c", task_kinds=("pairwise", "rating", "critique"))
    first, second = store.add_prompt("c", "one"), store.add_prompt("c", "two")
    a, b = (store.add_output(first, t, model="m", model_hash="h") for t in "ab")
    other = store.add_output(second, "c", model="m", model_hash="h")
    with pytest.raises(PayloadError, match="a pairwise task shows exactly 2 outputs, not 3"):
        store.add_task("c", "pairwise", [a, b, other])
    with pytest.raises(PayloadError, match="must all answer one prompt"):
        store.add_task("c", "pairwise", [a, other])
    with pytest.raises(PayloadError, match="'ranking' is not one campaign 'c' holds"):
        store.add_task("c", "ranking", [a, b])
    with pytest.raises(PayloadError, match="a critique task cannot be gold"):
        store.add_task("c", "critique", [a], gold={"critique": "too long"})
    with pytest.raises(PayloadError, match="'choice': 'C' is not one of A, B, tie, both_bad"):
        store.add_task("c", "pairwise", [a, b], gold={"choice": "C"})
    with pytest.raises(NotFoundError, match="no output with id 999"):
        store.add_task("c", "pairwise", [a, 999])
    with pytest.raises(NotFoundError, match="no prompt with id 999"):
        store.add_output(999, "text", model="m", model_hash="h")
    assert store.progress("c").tasks == 0


def test_overlap_sets_how_many_annotators_each_task_needs(db_url):
    with open_store(db_url) as store:
        _pairs(store, n=10, overlap=0.3)
        prompt = store.add_prompt("c", "for three people")
        outputs = [store.add_output(prompt, t, model="m", model_hash="h") for t in "ab"]
        store.add_task("c", "pairwise", outputs, required=3)
        with pytest.raises(PayloadError, match="required 0: give 1 or more annotators"):
            store.add_task("c", "pairwise", outputs, required=0)
    required = [row[0] for row in _sql(db_url, "SELECT required FROM tasks ORDER BY id")]
    assert required == [2, 1, 1, 2, 1, 1, 2, 1, 1, 1] + [3]  # every 1/0.3-th task, from the first


# --- labelling -----------------------------------------------------------------------------------


SHOWN_AS_TEXT = (
    "<script>alert('x')</script>\n\n  indented\ttab \r\nline  \n"
    "\u00e9\u6f22\U0001f600 &amp; <!-- -->  "
)


def test_model_text_round_trips_byte_exact(store):
    store.create_campaign("c", task_kinds=("pairwise", "correction"))
    _people(store, "ada")
    prompt = store.add_prompt("c", " <b>prompt</b>\n", meta={"source": "<i>"})
    a = store.add_output(
        prompt,
        SHOWN_AS_TEXT,
        model="runs/sft",
        model_hash="h",
        seed=7,
        generation={"temperature": 0.7, "top_p": 0.9},
    )
    b = store.add_output(prompt, " ", model="runs/sft", model_hash="h")
    task = store.add_task("c", "correction", [a])
    store.add_task("c", "pairwise", [a, b])
    shown = store.next_task("c", "ada")
    assert shown.prompt == " <b>prompt</b>\n"
    assert any(output.text == SHOWN_AS_TEXT for output in shown.outputs)
    store.submit_label(task, "ada", "r1", {"correction": SHOWN_AS_TEXT + "!", "critique": "\t<hr>"})
    (record,) = store.label_records("c")
    assert record.outputs[0].text.encode() == SHOWN_AS_TEXT.encode()
    assert (record.correction, record.critique) == (SHOWN_AS_TEXT + "!", "\t<hr>")
    assert record.outputs[0].generation == {"temperature": 0.7, "top_p": 0.9}


def test_labels_of_every_kind_come_back_as_records(store):
    store.create_campaign(
        "c", task_kinds=("pairwise", "ranking", "rating", "critique", "correction")
    )
    _people(store, "ada")
    prompt = store.add_prompt("c", "Say hi.")
    a, b, c = (
        store.add_output(prompt, t, model="m", model_hash="h", seed=i)
        for i, t in enumerate(["hi", "hello", "hey"])
    )
    answers = [
        ("pairwise", [b, a], {"choice": "A", "flags": ["off_topic", "unsafe"]}),
        ("ranking", [a, b, c], {"ranking": [2, 0, 1], "critique": "c is best"}),
        ("rating", [a], {"rating": 6, "thumbs": True}),
        ("critique", [c], {"critique": "too short", "flags": ["factually_wrong"]}),
        ("correction", [b], {"correction": "Hello!"}),
    ]
    for i, (kind, outputs, payload) in enumerate(answers):
        task = store.add_task("c", kind, outputs)
        assert store.submit_label(task, "ada", f"r{i}", payload)[1] is True
    records = store.label_records("c")
    assert [r.kind for r in records] == ["pairwise", "ranking", "rating", "critique", "correction"]
    pairwise, ranking, rating, critique, correction = records
    assert [o.output_id for o in pairwise.outputs] == [b, a]  # display order, not id order
    assert (pairwise.choice, pairwise.flags) == ("A", ("unsafe", "off_topic"))
    assert (ranking.ranking, ranking.critique) == ((2, 0, 1), "c is best")
    assert (rating.rating, rating.thumbs, rating.choice) == (6.0, True, None)
    assert (critique.critique, critique.flags) == ("too short", ("factually_wrong",))
    assert correction.correction == "Hello!"
    assert all(
        r.annotator == "ada" and r.campaign == "c" and r.prompt == "Say hi." for r in records
    )
    assert ranking.outputs[1].model == "m" and ranking.outputs[1].seed == 1
    assert records[0].created_at.endswith("+00:00") and "T" in records[0].created_at


def test_the_same_request_id_twice_stores_one_label(db_url):
    with open_store(db_url) as store:
        (task, *_) = _pairs(store)
        _people(store, "ada")
        first = store.submit_label(task, "ada", "req-1", {"choice": "A"})
        again = store.submit_label(task, "ada", "req-1", {"choice": "A"})
        assert first[1] is True and again == (first[0], False)
        store.undo_last("ada", "c")
        late_retry = store.submit_label(task, "ada", "req-1", {"choice": "A"})
        assert late_retry == (first[0], False)  # does not bring the undone label back
        assert store.label_records("c") == []
    assert _sql(db_url, "SELECT count(*) FROM labels") == [(1,)]


def test_concurrent_submissions_of_one_request_are_stored_once(db_url):
    with open_store(db_url) as store:
        (task, *_) = _pairs(store)
        _people(store, "ada")
        start = threading.Barrier(8)
        results, errors = [], []

        def submit():
            start.wait()
            try:
                results.append(store.submit_label(task, "ada", "double-click", {"choice": "B"}))
            except Exception as error:  # reported below, with the thread's error
                errors.append(error)

        threads = [threading.Thread(target=submit) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert sorted(created for _, created in results) == [False] * 7 + [True]
    assert len({label_id for label_id, _ in results}) == 1
    assert _sql(db_url, "SELECT count(*) FROM labels") == [(1,)]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"choice": "C"}, "'choice': 'C' is not one of A, B, tie, both_bad"),
        ({"rating": 9}, "'rating' is not part of a pairwise label: use choice, critique, flags"),
        ({"choice": "A", "flags": ["rude"]}, "'flags': .* from unsafe, factually_wrong, off_topic"),
        ({"choice": "A", "critique": "a\x00b"}, "'critique' holds a NUL character"),
        ({"critique": "no answer"}, "a pairwise label needs choice"),
        ({"choice": "A", "critique": "   "}, "'critique' is empty"),
    ],
)
def test_a_bad_pairwise_label_names_the_field_and_writes_nothing(db_url, payload, message):
    with open_store(db_url) as store:
        (task, *_) = _pairs(store)
        _people(store, "ada")
        with pytest.raises(PayloadError, match=message):
            store.submit_label(task, "ada", "req", payload)
        assert store.label_records("c") == []
    assert _sql(db_url, "SELECT count(*) FROM labels") == [(0,)]


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("rating", {"rating": 9}, "'rating': 9 is not on the scale: give a number from 1 to 7"),
        ("rating", {"thumbs": "yes"}, "'thumbs': 'yes' is not true"),
        (
            "ranking",
            {"ranking": [0, 0, 1]},
            r"'ranking': \[0, 0, 1\] is not an order of the 3 outputs",
        ),
        ("ranking", {"ranking": [0, 1]}, "give each position 0..2 once, best first"),
    ],
)
def test_bad_ratings_and_rankings_are_refused(store, kind, payload, message):
    store.create_campaign("c", task_kinds=(kind,))
    _people(store, "ada")
    prompt = store.add_prompt("c", "p")
    outputs = [
        store.add_output(prompt, t, model="m", model_hash="h")
        for t in ("abc" if kind == "ranking" else "a")
    ]
    task = store.add_task("c", kind, outputs)
    with pytest.raises(PayloadError, match=message):
        store.submit_label(task, "ada", "req", payload)
    assert store.progress("c").labels == 0


def test_a_task_is_labelled_once_per_annotator_and_request_ids_are_not_reused(store):
    first, second, *_ = _pairs(store)
    _people(store, "ada", "bob")
    store.submit_label(first, "ada", "r1", {"choice": "A"})
    with pytest.raises(ConflictError, match="'ada' has already labelled task .*: undo that"):
        store.submit_label(first, "ada", "r2", {"choice": "B"})
    with pytest.raises(ConflictError, match="request_id 'r1' is already used"):
        store.submit_label(second, "ada", "r1", {"choice": "B"})
    with pytest.raises(ConflictError, match="request_id 'r1' is already used"):
        store.submit_label(first, "bob", "r1", {"choice": "B"})
    assert store.submit_label(first, "bob", "r3", {"choice": "tie"})[1] is True
    assert store.progress("c").labels == 2


def test_undo_marks_the_latest_label_and_offers_its_task_again(store):
    first, second, *_ = _pairs(store, n=2, overlap=1.0)  # each needs 2: one place left after undo
    _people(store, "ada", "bob")
    assert store.undo_last("ada", "c") is None
    store.submit_label(first, "ada", "r1", {"choice": "A"})
    store.submit_label(second, "ada", "r2", {"choice": "B"})
    store.submit_label(second, "bob", "r3", {"choice": "B"})
    undone = store.undo_last("ada", "c")
    assert (undone.task_id, undone.choice, undone.annotator) == (second, "B", "ada")
    assert store.next_task("c", "ada").task_id == second
    assert [(r.annotator, r.task_id) for r in store.label_records("c")] == [
        ("ada", first),
        ("bob", second),
    ]
    assert store.submit_label(second, "ada", "r4", {"choice": "A"})[1] is True  # labels again
    assert store.undo_last("ada", "c").label_id != undone.label_id
    assert store.undo_last("ada", "c").task_id == first
    assert store.undo_last("ada", "c") is None


def test_next_task_serves_tasks_that_need_annotators_first(store):
    tasks = _pairs(store, n=4, overlap=0.5)  # required: 2, 1, 2, 1
    _people(store, "ada", "bob")
    store.refresh_statistics()  # what label init does after its bulk write: answers unchanged
    seen = []
    while (task := store.next_task("c", "ada")) is not None:
        assert store.next_task("c", "ada") == task  # the same task until it is answered
        seen.append(task.task_id)
        store.submit_label(task.task_id, "ada", f"ada-{task.task_id}", {"choice": "A"})
    assert sorted(seen) == tasks
    # ada's labels complete tasks 1 and 3; tasks 0 and 2 still need a second annotator
    first = store.next_task("c", "bob").task_id
    assert first in (tasks[0], tasks[2])
    store.skip(first, "bob")
    store.skip(first, "bob")  # twice: harmless
    second = store.next_task("c", "bob").task_id
    assert {first, second} == {tasks[0], tasks[2]}
    store.submit_label(second, "bob", "bob-1", {"choice": "B"})
    # the rest have their labels: never offered again, so their counts cannot be stuffed
    assert store.next_task("c", "bob") is None
    progress = store.progress("c")
    assert (progress.tasks, progress.complete, progress.labels) == (4, 3, 5)
    assert [(p.annotator, p.labelled, p.skipped, p.remaining) for p in progress.annotators] == [
        ("ada", 4, 0, 0),
        ("bob", 1, 1, 2),
    ]


def test_gold_tasks_go_to_everyone_and_their_answers_are_in_output_ids(store):
    store.create_campaign("c", task_kinds=("pairwise", "ranking"))
    _people(store, "ada", "bob")
    prompt = store.add_prompt("c", "p")
    a, b, c = (store.add_output(prompt, t, model="m", model_hash="h") for t in "abc")
    plain = [store.add_task("c", "pairwise", [a, b]) for _ in range(3)]
    gold = store.add_task("c", "pairwise", [b, a], gold={"choice": "A"})
    ranked = store.add_task("c", "ranking", [a, b, c], gold={"ranking": [2, 0, 1]})
    for task_id in [*plain, gold, ranked]:
        store.submit_label(
            task_id,
            "ada",
            f"ada-{task_id}",
            {"choice": "A"} if task_id != ranked else {"ranking": [0, 1, 2]},
        )
    # for bob, the three plain tasks are complete; the gold ones come first
    firsts = []
    for _ in range(2):
        firsts.append(store.next_task("c", "bob").task_id)
        store.skip(firsts[-1], "bob")
    assert sorted(firsts) == [gold, ranked]
    assert store.gold_answers("c") == {gold: b, ranked: [c, a, b]}
    assert {r.task_id: r.is_gold for r in store.label_records("c")}[gold] is True


def test_annotators_working_at_once_start_on_different_tasks(store):
    _pairs(store, n=30)
    names = [f"annotator-{i}" for i in range(10)]
    _people(store, *names)
    firsts = {store.next_task("c", name).task_id for name in names}
    assert len(firsts) >= 6  # a fixed shuffle per annotator, not everyone on task 1
