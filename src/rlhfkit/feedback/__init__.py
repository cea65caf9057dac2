"""Human feedback, collected and used: the store, the records it returns, agreement, exports.

    store.py       the database (SQLAlchemy: SQLite by default, PostgreSQL by URL): campaigns,
                   prompts, model outputs with provenance, tasks, labels; idempotent submission,
                   skip and undo. Beside it: schema.py (tables), migrations.py (versions),
                   engine.py (URLs, connections), payload.py (label checks), views.py (the
                   values it returns besides records)
    assign.py      who labels what: overlap items, and the next task for an annotator (SQL)
    records.py     OutputRecord and LabelRecord: what the store hands out, plain frozen values
    agreement.py   how far annotators agree (Cohen's / Fleiss' kappa, Krippendorff's alpha)
                   and how often they match gold answers
    export.py      labels as the datasets that ``sft``, ``reward`` and ``dpo`` read
    privacy.py     labels without the people: annotators as keyed-hash pseudonyms, dates
    pii.py         e-mail addresses, phone numbers and names in free text scrubbed (Presidio,
                   the optional ``pii`` extra)

Only the store needs a database; agreement and export work on records alone.
"""
