"""Handing out work: overlap items, the next task (one SQL query), overlap changed later, and
gold answers set after a campaign is made. Store tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

import test_feedback_store
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.agreement import agreement_report
from rlhfkit.feedback.assign import (
    ANNOTATOR_STEP,
    MODULUS,
    TASK_STEP,
    annotators_needed,
    is_overlap_item,
)
from rlhfkit.feedback.payload import PayloadError
from rlhfkit.feedback.store import NotFoundError
from test_feedback_store import _pairs, _people, _sql

# the store tests' databases: a SQLite file and a PostgreSQL database for each test
postgres_server = test_feedback_store.postgres_server
db_url, store = test_feedback_store.db_url, test_feedback_store.store

# --- overlap items -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 1.0])
def test_any_first_n_tasks_hold_ceil_n_times_overlap_items(overlap):
    ratio = Fraction(overlap).limit_denominator(10_000)
    flags = [is_overlap_item(i, overlap) for i in range(200)]
    for n in range(201):
        assert sum(flags[:n]) == math.ceil(n * ratio)
    assert flags[0] == (overlap > 0)  # the first task of a run, so tiny campaigns get one
    assert annotators_needed(0, overlap, 3) == (3 if overlap > 0 else 1)


# --- the next task -------------------------------------------------------------------------------


def _expected_next(tasks, labels, skips, holds, annotator_id):
    """The next task's id as the module docstring defines it, computed in Python; ``holds``
    maps each annotator id to the task reserved for them."""
    taken = {
        task["id"]: sum(1 for task_id, _ in labels if task_id == task["id"])
        + sum(1 for who, task_id in holds.items() if task_id == task["id"] and who != annotator_id)
        for task in tasks
    }
    candidates = [
        task
        for task in tasks
        if (task["id"], annotator_id) not in labels
        and (task["id"], annotator_id) not in skips
        and (task["is_gold"] or taken[task["id"]] < task["required"])
    ]
    if not candidates:
        return None

    def order(task):
        return (task["id"] * TASK_STEP + annotator_id * ANNOTATOR_STEP) % MODULUS, task["id"]

    return min(candidates, key=order)["id"]


def test_next_task_is_the_defined_one_through_labels_skips_undos_and_gold(store, db_url):
    """The SQL query against the definition, step by step through a random labelling session."""
    _pairs(store, n=24, overlap=0.4)
    prompt = store.add_prompt("c", "gold")
    a, b = (store.add_output(prompt, text, model="m", model_hash="h") for text in "ab")
    gold = [store.add_task("c", "pairwise", [a, b], gold={"choice": "A"}) for _ in range(2)]
    names = ["ada", "bob", "cy"]
    _people(store, *names)
    ids = {name: store.get_annotator(name).annotator_id for name in names}
    tasks = [
        {"id": task_id, "required": required, "is_gold": bool(is_gold)}
        for task_id, required, is_gold in _sql(db_url, "SELECT id, required, is_gold FROM tasks")
    ]
    labels, skips, holds = set(), set(), {}
    rng, served = random.Random(0), {name: [] for name in names}
    for step in range(90):
        name = rng.choice(names)
        task = store.next_task("c", name)
        expected = _expected_next(tasks, labels, skips, holds, ids[name])
        assert (task and task.task_id) == expected, f"step {step}, {name}"
        holds.pop(ids[name], None)
        if task is None:
            continue
        holds[ids[name]] = task.task_id
        action = rng.random()
        if action < 0.15:
            store.skip(task.task_id, name, campaign="c")
            skips.add((task.task_id, ids[name]))
            del holds[ids[name]]
        elif action < 0.25 and served[name]:
            undone = store.undo_last(name, "c")
            labels.discard((undone.task_id, ids[name]))
            served[name].remove(undone.task_id)
        else:
            store.submit_label(task.task_id, name, f"{name}-{step}", {"choice": "B"}, campaign="c")
            labels.add((task.task_id, ids[name]))
            served[name].append(task.task_id)
            del holds[ids[name]]
    for name in names:  # undo aside, never a task twice
        assert len(served[name]) == len(set(served[name]))
    assert set(gold) <= {task_id for task_id, _ in labels}  # gold went to someone early on


def test_each_annotator_gets_every_task_once_then_none(store):
    tasks = _pairs(store, n=12, overlap=0.5)
    _people(store, "ada")
    seen = []
    while (task := store.next_task("c", "ada")) is not None:
        seen.append(task.task_id)
        store.submit_label(task.task_id, "ada", f"ada-{task.task_id}", {"choice": "tie"})
    assert sorted(seen) == tasks
    assert seen != tasks  # a shuffled order, not the order of creation


# --- changing the overlap ------------------------------------------------------------------------


def test_set_overlap_renumbers_only_tasks_nobody_has_labelled(store, db_url):
    tasks = _pairs(store, n=10, overlap=0.0)
    _people(store, "ada")
    for task_id in (tasks[0], tasks[3], tasks[4]):
        store.submit_label(task_id, "ada", f"ada-{task_id}", {"choice": "A"})
    store.undo_last("ada", "c")  # tasks[4]: its only label undone, so unlabelled again
    assert store.set_overlap("c", 0.5, overlap_annotators=3) == (8, 4)
    required = dict(_sql(db_url, "SELECT id, required FROM tasks"))
    assert [required[task_id] for task_id in tasks] == [1, 3, 1, 1, 3, 1, 3, 1, 3, 1]
    settings = store.campaign_settings("c")
    assert (settings.overlap, settings.overlap_annotators) == (0.5, 3)
    assert store.progress("c").complete == 2  # the labelled ones stay complete

    # lowering it releases the unlabelled tasks; overlap_annotators is kept unless given
    assert store.set_overlap("c", 0.0) == (8, 0)
    assert {required for _, required in _sql(db_url, "SELECT id, required FROM tasks")} == {1}
    assert store.campaign_settings("c").overlap_annotators == 3

    # tasks added later continue the campaign's run under the new ratio
    store.set_overlap("c", 1.0)
    prompt = store.add_prompt("c", "later")
    outputs = [store.add_output(prompt, text, model="m", model_hash="h") for text in "ab"]
    assert store.task_details("c", store.add_task("c", "pairwise", outputs)).required == 3


def test_set_overlap_refuses_bad_settings_and_changes_nothing(store, db_url):
    _pairs(store, n=4, overlap=0.5)
    before = _sql(db_url, "SELECT id, required FROM tasks ORDER BY id")
    with pytest.raises(ConfigError, match="overlap 1.5 is not a fraction"):
        store.set_overlap("c", 1.5)
    with pytest.raises(ConfigError, match="overlap_annotators 1: give 2 or more"):
        store.set_overlap("c", 1.0, overlap_annotators=1)
    with pytest.raises(NotFoundError, match="no campaign 'nope'"):
        store.set_overlap("nope", 0.5)
    assert _sql(db_url, "SELECT id, required FROM tasks ORDER BY id") == before
    assert store.campaign_settings("c").overlap == 0.5


# --- gold answers set later ----------------------------------------------------------------------


def test_set_gold_marks_tasks_and_scores_the_labels_they_already_have(store):
    tasks = _pairs(store, n=4)
    _people(store, "ada", "bob", "new")
    for task_id in tasks:
        store.submit_label(task_id, "ada", f"ada-{task_id}", {"choice": "A"})
    store.submit_label(tasks[0], "bob", "bob-0", {"choice": "B"})
    shown = store.task_details("c", tasks[0]).task.outputs
    store.set_gold("c", {tasks[0]: {"choice": "A"}, tasks[1]: {"choice": "tie"}})

    assert store.gold_answers("c") == {tasks[0]: shown[0].output_id, tasks[1]: "tie"}
    assert [(d.task.task_id, d.gold, d.labels) for d in store.gold_tasks("c")] == [
        (tasks[0], {"choice": "A"}, 2),
        (tasks[1], {"choice": "tie"}, 1),
    ]
    report = agreement_report(store.label_records("c"), store.gold_answers("c"))
    assert {
        name: (row["labels"], row["correct"]) for name, row in report["gold_accuracy"].items()
    } == {"ada": (2, 1), "bob": (1, 0)}
    # every task has its one label, but gold tasks go to everyone: they come first
    first = store.next_task("c", "new").task_id
    store.skip(first, "new")
    assert {first, store.next_task("c", "new").task_id} == {tasks[0], tasks[1]}

    store.set_gold("c", {tasks[0]: None})  # plain again
    assert store.gold_answers("c") == {tasks[1]: "tie"}
    assert store.task_details("c", tasks[0]).gold is None


def test_set_gold_checks_every_answer_and_writes_none_if_one_is_wrong(store):
    tasks = _pairs(store, n=2)
    store.create_campaign("other", task_kinds=("critique",))
    prompt = store.add_prompt("other", "p")
    output = store.add_output(prompt, "text", model="m", model_hash="h")
    critique = store.add_task("other", "critique", [output])
    cases = [
        (
            {tasks[0]: {"choice": "A"}, tasks[1]: {"choice": "C"}},
            PayloadError,
            rf"task {tasks[1]}: label field 'choice': 'C' is not one of",
        ),
        (
            {tasks[0]: {"choice": "A", "critique": "why"}},
            PayloadError,
            "a gold answer holds only choice, not 'critique'",
        ),
        ({tasks[0]: {}}, PayloadError, "a pairwise label needs choice"),
        ({critique: {"choice": "A"}}, NotFoundError, f"task {critique} is not one of"),
        ({999: {"choice": "A"}}, NotFoundError, "no task with id 999"),
    ]
    for answers, error, message in cases:
        with pytest.raises(error, match=message):
            store.set_gold("c", answers)
    store.create_campaign("empty")
    with pytest.raises(NotFoundError, match="campaign 'empty' has no tasks yet"):
        store.task_details("empty")
    with pytest.raises(PayloadError, match="a critique task cannot be gold"):
        store.set_gold("other", {critique: {"critique": "too long"}})
    assert store.gold_answers("c") == {} and store.gold_answers("other") == {}
