"""Exports without the people in them: pseudonymous annotators, dates for times, and free text
scrubbed of e-mail addresses, phone numbers and names (``rlhfkit.feedback.privacy``, ``.pii``).

The scrubber's tests need the optional extra (``pip install 'rlhfkit[pii]'``): without it they
skip, unless ``RLHFKIT_REQUIRE_PII=1`` turns the skip into a failure (for CI, as
``RLHFKIT_REQUIRE_POSTGRES`` does for PostgreSQL).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from rlhfkit.cli import main
from rlhfkit.config import FeedbackDataCfg
from rlhfkit.data.agreement import agreement_ceiling
from rlhfkit.data.feedback import load_demonstrations, load_labeled, load_pairs, load_ratings
from rlhfkit.errors import DataError
from rlhfkit.feedback import migrations, privacy
from rlhfkit.feedback.agreement import agreement_report
from rlhfkit.feedback.engine import resolve_url
from rlhfkit.feedback.privacy import PSEUDONYM_KEY, day, pseudonym, pseudonymise
from rlhfkit.feedback.records import LabelRecord, OutputRecord
from rlhfkit.feedback.store import open_store
from rlhfkit.feedback.web import create_app
from rlhfkit.feedback.web.auth import hash_password

PEOPLE = ("ada.lovelace", "bob", "carol")
DB = "campaigns/c/feedback.db"
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
EMAIL, PHONE = "ada.lovelace@example.org", "+44 20 7946 0958"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """The default database of campaign c is campaigns/c/feedback.db, under the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def presidio():
    try:
        import presidio_analyzer  # noqa: F401
        import presidio_anonymizer  # noqa: F401
    except ImportError as missing:
        if os.environ.get("RLHFKIT_REQUIRE_PII") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_PII=1 but {missing}: pip install 'rlhfkit[pii]'")
        pytest.skip(f"{missing}: the pii extra is not installed")


@pytest.fixture(scope="module")
def scrubber(presidio):
    from rlhfkit.feedback.pii import PiiScrubber

    return PiiScrubber()


def output(output_id: int, at: str = "2026-11-20T23:59:59.123456+00:00") -> OutputRecord:
    return OutputRecord(output_id, f"output {output_id}", "m", "h", {}, output_id, at)


def record(label_id: int, annotator: str, campaign: str = "c", **fields) -> LabelRecord:
    fields = {"choice": "A", "created_at": "2026-11-21T08:30:01.654321+00:00", **fields}
    return LabelRecord(
        label_id,
        campaign,
        label_id,
        "pairwise",
        annotator,
        "prompt",
        (output(2 * label_id), output(2 * label_id + 1)),
        **fields,
    )


def build_campaigns(db: str = DB, admin_hash: str = "not-a-real-hash") -> None:
    """Campaign c: four prompts, each with a pairwise task and a rating task per output, which
    ada and bob both label (so agreement is defined) and carol partly, and a critique and a
    correction task; campaign d: one task."""
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    with open_store(db) as store:
        for name in PEOPLE:
            store.add_annotator(name, admin_hash, is_admin=name == "ada.lovelace")
        store.create_campaign("c", task_kinds=("pairwise", "rating", "critique", "correction"))
        answers = {
            "ada.lovelace": (["A", "A", "B", "A"], [6, 3, 5, 2]),
            "bob": (["A", "B", "B", "A"], [5, 3, 6, 1]),
            "carol": (["A", "tie"], [7, 2]),
        }
        for i in range(4):
            prompt = store.add_prompt("c", f"Review film {i}.")
            first, second = (
                store.add_output(
                    prompt, f"Film {i} was {word}.", model="m", model_hash="h", seed=seed
                )
                for seed, word in enumerate(("good", "slow"))
            )
            pairwise = store.add_task("c", "pairwise", [first, second])
            ratings_of = [store.add_task("c", "rating", [shown]) for shown in (first, second)]
            critique = store.add_task("c", "critique", [second])
            correction = store.add_task("c", "correction", [second])
            for name, (choices, ratings) in answers.items():
                if i < len(choices):
                    _label(store, pairwise, name, choice=choices[i])
                    _label(store, ratings_of[0], name, rating=ratings[i])
                    _label(store, ratings_of[1], name, rating=8 - ratings[i])
            _label(
                store,
                critique,
                "ada.lovelace",
                critique=f"Too vague, as Bob said; write to {EMAIL} or call {PHONE}.",
            )
            _label(
                store,
                correction,
                "bob",
                correction=f"Film {i} was slow, says Carol Smith (carol@example.com).",
            )
        store.create_campaign("d")
        prompt = store.add_prompt("d", "Review a play.")
        outputs = [
            store.add_output(prompt, text, model="m", model_hash="h", seed=0)
            for text in ("Fine.", "Long.")
        ]
        task = store.add_task("d", "pairwise", outputs)
        _label(store, task, "ada.lovelace", choice="B")


def _label(store, task_id: int, annotator: str, **payload) -> None:
    store.submit_label(task_id, annotator, uuid.uuid4().hex, payload)


def export(form: str, output: str, *options: str, campaign: str = "c") -> int:
    return main(
        [
            "label",
            "export",
            "--campaign",
            campaign,
            "--db",
            DB,
            "--as",
            form,
            "--output",
            output,
            *options,
        ]
    )


def rows_of(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def assert_no_sign_in_names(data: bytes) -> None:
    lowered = data.lower()
    for name in PEOPLE:
        assert name.encode() not in lowered, name


# --- pseudonyms ----------------------------------------------------------------------------------


def test_pseudonyms_are_stable_within_a_campaign_and_differ_across_campaigns_and_keys():
    key, other_key = b"k" * 32, b"j" * 32
    alias = pseudonym(key, "c", "ada")
    assert re.fullmatch(r"ann-[0-9a-f]{10}", alias)
    assert pseudonym(key, "c", "ada") == alias
    assert pseudonym(key, "d", "ada") != alias
    assert pseudonym(key, "c", "bob") != alias
    assert pseudonym(other_key, "c", "ada") != alias  # the key, not the name, decides

    labels = [record(1, "ada"), record(2, "bob"), record(3, "ada"), record(4, "ada", "d")]
    hidden = pseudonymise(labels, key).records
    assert [label.annotator for label in hidden] == [
        alias,
        pseudonym(key, "c", "bob"),
        alias,
        pseudonym(key, "d", "ada"),
    ]
    assert [label.choice for label in hidden] == ["A"] * 4  # only names and times change


def test_pseudonymised_labels_carry_dates_and_names_in_free_text_become_pseudonyms():
    key = b"k" * 32
    [hidden] = pseudonymise(
        [record(1, "ada", critique="Ada and BOB agree; adam, bo and bob.smith do not.")],
        key,
        known_names=["bob", "bo"],
    ).records
    ada, bob = pseudonym(key, "c", "ada"), pseudonym(key, "c", "bob")
    # whole words, any case; "bo" is too short to look for, "adam" is another word
    assert hidden.critique == f"{ada} and {bob} agree; adam, bo and {bob}.smith do not."
    assert hidden.created_at == "2026-11-21"
    assert [shown.created_at for shown in hidden.outputs] == ["2026-11-20", "2026-11-20"]
    assert day("2026-11-21T23:30:00-02:00") == "2026-11-22"  # the UTC date
    assert day("") == ""
    with pytest.raises(DataError, match="'yesterday' is not ISO 8601"):
        day("yesterday")


def test_two_annotators_with_one_pseudonym_are_refused(monkeypatch):
    monkeypatch.setattr(privacy, "PSEUDONYM_HEX", 0)  # every name collides
    with pytest.raises(DataError, match="annotators 'ada' and 'bob' share the pseudonym ann-"):
        pseudonymise([record(1, "ada"), record(2, "bob")], b"k" * 32)


def test_the_store_keeps_one_random_key_per_database(tmp_path):
    with open_store(tmp_path / "one.db") as store:
        key = store.secret(PSEUDONYM_KEY)
        assert len(key) == 32 and store.secret(PSEUDONYM_KEY) == key
    with open_store(tmp_path / "one.db") as store:
        assert store.secret(PSEUDONYM_KEY) == key
    with open_store(tmp_path / "two.db") as store:
        assert store.secret(PSEUDONYM_KEY) != key

    stores = [open_store(tmp_path / "three.db") for _ in range(4)]  # first use, all at once
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda s=s: keys.append(s.secret(PSEUDONYM_KEY))) for s in stores
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert len(keys) == 4 and len(set(keys)) == 1


def test_the_secrets_migration_makes_the_table_the_store_uses(tmp_path):
    path = tmp_path / "feedback.db"
    open_store(path).close()
    engine = create_engine(resolve_url(str(path)))
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE secrets"))
        migrations._add_secrets(connection)
    engine.dispose()
    with open_store(path) as store:
        assert len(store.secret(PSEUDONYM_KEY)) == 32


# --- label export --pseudonymise -----------------------------------------------------------------


def test_pseudonymised_exports_name_nobody_and_give_dates(capsys):
    build_campaigns()
    with open_store(DB) as store:
        key = store.secret(PSEUDONYM_KEY)
    aliases = {name: pseudonym(key, "c", name) for name in PEOPLE}
    capsys.readouterr()
    for form in ("pairs", "ratings", "binary", "critiques", "sft"):
        assert export(form, f"{form}.jsonl", "--pseudonymise") == 0
        data = Path(f"{form}.jsonl").read_bytes()
        assert_no_sign_in_names(data)
        for row in rows_of(f"{form}.jsonl"):
            assert row["annotator"] in aliases.values()
            dates = [value for column, value in row.items() if column.endswith("created_at")]
            assert len(dates) >= 2 and all(DATE.fullmatch(value) for value in dates), row
    out = capsys.readouterr().out
    assert "pseudonymised: annotators as ann-... (stable within 'c')" in out

    [critique] = {row["critique"] for row in rows_of("critiques.jsonl")}
    assert critique.startswith(
        f"Too vague, as {aliases['bob']} said; write to {aliases['ada.lovelace']}@example.org"
    )
    assert {row["completion"] for row in rows_of("sft.jsonl")} >= {
        f"Film 0 was slow, says {aliases['carol']} Smith ({aliases['carol']}@example.com)."
    }

    assert export("pairs", "again.jsonl", "--pseudonymise") == 0  # stable across exports
    assert Path("again.jsonl").read_bytes() == Path("pairs.jsonl").read_bytes()
    assert export("pairs", "d.jsonl", "--pseudonymise", campaign="d") == 0
    assert (
        {row["annotator"] for row in rows_of("d.jsonl")}
        == {pseudonym(key, "d", "ada.lovelace")}
        != {aliases["ada.lovelace"]}
    )

    assert export("pairs", "plain.jsonl") == 0  # without the option, nothing changes
    assert b"ada.lovelace" in Path("plain.jsonl").read_bytes()


def test_agreement_and_the_loaders_see_the_same_data_pseudonymised(capsys):
    build_campaigns()
    with open_store(DB) as store:
        plain = store.label_records("c")
        hidden = privacy.campaign_records(store, "c", pseudonymous=True).records
        key = store.secret(PSEUDONYM_KEY)
    aliases = {name: pseudonym(key, "c", name) for name in PEOPLE}

    def renamed(report):
        text = json.dumps(report, sort_keys=True)
        for name, alias in aliases.items():
            text = text.replace(json.dumps(name), json.dumps(alias))
        return _pairs_as_sets(json.loads(text))

    plain_report = agreement_report(plain)
    assert plain_report["pairwise"]["fleiss_kappa"]["value"] is not None
    assert _pairs_as_sets(agreement_report(hidden)) == renamed(plain_report)

    for options, suffix in (((), "plain"), (("--pseudonymise",), "hidden")):
        for form in ("pairs", "ratings", "binary", "critiques", "sft"):
            assert export(form, f"{form}-{suffix}.jsonl", *options) == 0

    def data(form, suffix):
        return FeedbackDataCfg(path=f"{form}-{suffix}.jsonl", eval_fraction=0.0)

    ceilings = {
        suffix: agreement_ceiling(load_pairs(data("ratings", suffix), "train"))
        for suffix in ("plain", "hidden")
    }
    assert ceilings["plain"] == ceilings["hidden"] and ceilings["plain"].pairs > 0
    merged = {
        suffix: [
            (r.prompt, r.completion, r.ratings, r.meta.get("annotators", (r.annotator,)))
            for r in load_ratings(data("ratings", suffix), "train")
        ]
        for suffix in ("plain", "hidden")
    }
    assert [row[:3] for row in merged["plain"]] == [row[:3] for row in merged["hidden"]]
    assert [tuple(aliases[name] for name in row[3]) for row in merged["plain"]] == [
        row[3] for row in merged["hidden"]
    ]
    for load, form in (
        (load_pairs, "pairs"),
        (load_labeled, "binary"),
        (load_demonstrations, "sft"),
        (load_demonstrations, "critiques"),
    ):
        assert len(load(data(form, "hidden"), "train")) == len(load(data(form, "plain"), "train"))


def _pairs_as_sets(report: dict) -> dict:
    """The report with each block's annotator pairs as a set: renaming reorders them."""
    for block in report.values():
        if isinstance(block, dict) and "annotator_pairs" in block:
            block["annotator_pairs"] = sorted(
                json.dumps({**pair, "annotators": sorted(pair["annotators"])}, sort_keys=True)
                for pair in block["annotator_pairs"]
            )
    return report


def test_admin_download_pseudonymised_matches_the_command_line():
    build_campaigns(admin_hash=hash_password("ada-pass"))
    with open_store(DB) as store:
        client = TestClient(
            create_app(store, secret_key="test-secret-key-0123456789", campaign="c"),
            follow_redirects=False,
        )
        login = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
        assert (
            client.post(
                "/login", data={"csrf_token": token, "name": "ada.lovelace", "password": "ada-pass"}
            ).status_code
            == 303
        )
        assert "pseudonymise=1" in client.get("/admin").text
        response = client.get("/admin/export?as=ratings&pseudonymise=1")
        assert response.status_code == 200
        assert response.headers["content-disposition"] == (
            'attachment; filename="c-ratings-pseudonymised.jsonl"'
        )
        assert_no_sign_in_names(response.content)
        plain = client.get("/admin/export?as=ratings&pseudonymise=0")
        assert b"ada.lovelace" in plain.content
        refused = client.get("/admin/export?as=ratings&pseudonymise=yes")
        assert refused.status_code == 400 and "give 1" in refused.text
    assert export("ratings", "cli.jsonl", "--pseudonymise") == 0
    assert [json.loads(line) for line in response.text.splitlines()] == rows_of("cli.jsonl")


# --- scrubbing free text -------------------------------------------------------------------------


def test_pii_model_without_scrub_pii_is_refused_up_front(capsys):
    build_campaigns()
    assert export("critiques", "x.jsonl", "--pii_model", "en_core_web_lg") == 2
    err = capsys.readouterr().err
    assert "pii_model" in err and "pass --scrub_pii too" in err
    assert not Path("x.jsonl").exists()


def test_scrub_pii_without_the_extra_names_the_install_command(capsys, monkeypatch):
    build_campaigns()
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # import fails as if missing
    assert export("critiques", "x.jsonl", "--scrub_pii") == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith(
            "--scrub_pii needs Presidio, the optional extra 'pii': pip install 'rlhfkit[pii]'"
        )
        and "\n" not in err
    )
    assert not Path("x.jsonl").exists()


def test_scrubber_replaces_real_emails_and_phone_numbers(scrubber):
    text = (
        f"Mail {EMAIL}, or call {PHONE} or (212) 555-0143; Tokyo is +81 3-3224-5000. "
        "Keep 2024, 3.14159, 12345 and 'x@y.notarealtld'. Ada Lovelace stays."
    )
    assert scrubber(text) == (
        "Mail <EMAIL_ADDRESS>, or call <PHONE_NUMBER> or <PHONE_NUMBER>; Tokyo is <PHONE_NUMBER>. "
        "Keep 2024, 3.14159, 12345 and 'x@y.notarealtld'. Ada Lovelace stays."
    )
    assert scrubber(None) is None and scrubber("") == ""
    assert "names are not detected without --pii_model" in scrubber.describe()


def test_scrubber_replaces_names_found_by_a_spacy_pipeline(presidio, tmp_path):
    """A real spaCy pipeline, small enough to build here: an entity ruler that knows one name.
    It shows the wiring (the pipeline's PERSON entities are replaced); how many names a real
    model such as en_core_web_lg finds is that model's recall."""
    import spacy

    from rlhfkit.feedback.pii import PiiScrubber

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(
        [{"label": "PERSON", "pattern": [{"LOWER": "ada"}, {"LOWER": "lovelace"}]}]
    )
    nlp.to_disk(tmp_path / "names")
    with_names = PiiScrubber(str(tmp_path / "names"))
    assert with_names(f"Ada Lovelace ({EMAIL}) liked it.") == "<PERSON> (<EMAIL_ADDRESS>) liked it."
    assert "PERSON" in with_names.describe()


def test_an_unknown_spacy_pipeline_is_refused_not_downloaded(presidio):
    from rlhfkit.errors import ConfigError
    from rlhfkit.feedback.pii import PiiScrubber

    with pytest.raises(
        ConfigError,
        match="--pii_model = 'en_core_web_nope': no spaCy pipeline of that name is installed",
    ):
        PiiScrubber("en_core_web_nope")


def test_export_scrubs_critiques_and_corrections(presidio, capsys):
    build_campaigns()
    capsys.readouterr()
    assert export("critiques", "critiques.jsonl", "--scrub_pii") == 0
    assert export("sft", "sft.jsonl", "--scrub_pii", "--pseudonymise") == 0
    out = capsys.readouterr().out
    assert "scrubbed critiques and corrections: EMAIL_ADDRESS 8, PHONE_NUMBER 4" in out
    assert "names are not detected without --pii_model" in out
    [critique] = {row["critique"] for row in rows_of("critiques.jsonl")}
    assert critique == "Too vague, as Bob said; write to <EMAIL_ADDRESS> or call <PHONE_NUMBER>."
    sft = Path("sft.jsonl").read_bytes()
    assert_no_sign_in_names(sft)
    assert b"@example.com" not in sft and b"<EMAIL_ADDRESS>" in sft
    outputs = {row["output_text"] for row in rows_of("sft.jsonl")}
    assert outputs == {f"Film {i} was slow." for i in range(4)}  # model outputs stay as they were
