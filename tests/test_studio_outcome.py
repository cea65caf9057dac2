"""The labelling page shows an output's simulated outcome (from ``hindsight --method rlhs``)."""

from __future__ import annotations

import json
import random
import re

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback.campaign import import_plans, store_plans
from rlhfkit.feedback.store import open_store
from rlhfkit.feedback.web import create_app
from rlhfkit.feedback.web.auth import hash_password

HEADING = "What happened next (simulated)"


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "feedback.db") as opened:
        opened.add_annotator("bob", hash_password("bob-pass"))
        yield opened


def campaign_from(store, path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    store.create_campaign("c", task_kinds=("pairwise",))
    store_plans(store, "c", import_plans(str(path)), ["pairwise"], random.Random(0))


def label_page(store) -> str:
    client = TestClient(
        create_app(store, secret_key="test-secret-key-0123456789", campaign="c"),
        follow_redirects=False,
    )
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    signed_in = client.post(
        "/login", data={"csrf_token": token, "name": "bob", "password": "bob-pass"}
    )
    assert signed_in.status_code == 303
    return client.get("/label").text


def test_each_response_shows_its_simulated_outcome(store, tmp_path):
    campaign_from(
        store,
        tmp_path / "import.jsonl",
        [
            {
                "prompt": "Should I buy the warranty?",
                "completion": "Yes, always.",
                "model": "m",
                "simulated_outcome": "They paid $80 and never used it.",
                "simulator": "m",
            },
            {
                "prompt": "Should I buy the warranty?",
                "completion": "Check the failure rate first.",
                "model": "m",
                "simulated_outcome": "They skipped it <and> saved $80.",
                "simulator": "m",
            },
        ],
    )
    html = label_page(store)
    assert html.count(HEADING) == 2
    assert "They paid $80 and never used it." in html
    assert "They skipped it &lt;and&gt; saved $80." in html  # escaped like any model text
    # each outcome sits in its own response's section, after the response
    for section in re.findall(r'<section class="output">(.*?)</section>', html, re.S):
        response, outcome = re.search(
            r'<div class="text">(.*?)</div>.*'
            r'<div class="text outcome">(.*?)</div>',
            section,
            re.S,
        ).groups()
        assert (response, outcome) in {
            ("Yes, always.", "They paid $80 and never used it."),
            ("Check the failure rate first.", "They skipped it &lt;and&gt; saved $80."),
        }


def test_outputs_without_an_outcome_show_none(store, tmp_path):
    campaign_from(
        store,
        tmp_path / "import.jsonl",
        [{"prompt": "Q?", "completions": ["first answer", "second answer"], "model": "m"}],
    )
    html = label_page(store)
    assert "first answer" in html and HEADING not in html and "outcome" not in html
