"""Personal data in annotators' free text, replaced by placeholders: Presidio, an optional extra.

Critiques and corrections are what annotators write, and people write e-mail addresses, phone
numbers and names into them. ``PiiScrubber`` finds them with Microsoft Presidio
(``pip install 'rlhfkit[pii]'``) and replaces each with its kind in angle brackets::

    "mail ada@example.org or call (212) 555-0143" -> "mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>"

What is found depends on what is installed:

- always: ``EMAIL_ADDRESS`` (a pattern, and a domain under a real public suffix, checked
  against the suffix list bundled with ``tldextract``, never fetched) and ``PHONE_NUMBER``
  (Google's libphonenumber, ``phonenumbers``: numbers valid in the US, UK, Germany, France,
  Israel, India, Canada or Brazil, or any written with a ``+`` country code). These need no
  language model and run offline.
- names (``PERSON``) only with a spaCy pipeline that has a named-entity recogniser, named by
  ``model``: an installed package such as ``en_core_web_lg`` or a pipeline folder. Without one,
  names are NOT detected and stay in the text. spaCy's own models are not on PyPI; install one
  from spaCy's releases (``python -m spacy download en_core_web_lg`` where the network allows).
  How many names are found is the model's recall, not a promise: read a sample of the output.

Only English is configured. Detection is statistical and pattern-based: it lowers the chance
that personal data leaves in an export; it cannot prove there is none.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rlhfkit.errors import ConfigError
from rlhfkit.feedback.records import LabelRecord

INSTALL = "pip install 'rlhfkit[pii]'"
PATTERN_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER")
"""Found with no language model."""
MODEL_ENTITIES = ("PERSON",)
"""Found only with a spaCy pipeline (``model``)."""
LANGUAGE = "en"


class PiiScrubber:
    """Replaces personal data in text by ``<ENTITY>`` placeholders (module docstring).

    Building one loads Presidio (seconds) and the spaCy pipeline if named; build it once per
    export and call it on every text.
    """

    def __init__(self, model: str = ""):
        try:
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_anonymizer import AnonymizerEngine
        except ImportError:
            raise ConfigError(
                f"--scrub_pii needs Presidio, the optional extra 'pii': {INSTALL}"
            ) from None
        # Presidio logs a line per recogniser it skips, and a traceback when a remote suffix
        # list cannot be fetched; neither is news to someone exporting.
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        self.model = model
        self.entities = PATTERN_ENTITIES + (MODEL_ENTITIES if model else ())
        registry = RecognizerRegistry(supported_languages=[LANGUAGE])
        for recognizer in _pattern_recognizers():
            registry.add_recognizer(recognizer)
        if model:
            from presidio_analyzer.predefined_recognizers import SpacyRecognizer

            registry.add_recognizer(
                SpacyRecognizer(
                    supported_language=LANGUAGE, supported_entities=list(MODEL_ENTITIES)
                )
            )
        self._analyzer = AnalyzerEngine(
            registry=registry, nlp_engine=_nlp_engine(model), supported_languages=[LANGUAGE]
        )
        self._anonymizer = AnonymizerEngine()
        self.replaced: Counter = Counter()
        """Entity -> how many were replaced, over every call so far."""

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        found = self._analyzer.analyze(text, language=LANGUAGE, entities=list(self.entities))
        if not found:
            return text
        scrubbed = self._anonymizer.anonymize(text, found)  # "replace" with <ENTITY> by default
        self.replaced.update(item.entity_type for item in scrubbed.items)
        return scrubbed.text

    def describe(self) -> str:
        """What this scrubber finds, for the command's output."""
        found = ", ".join(self.entities)
        if self.model:
            return f"{found} (names with spaCy pipeline {self.model!r})"
        return (
            f"{found} only: names are not detected without --pii_model (a spaCy pipeline "
            "with named entities, e.g. en_core_web_lg)"
        )


def scrub_records(records: Iterable[LabelRecord], scrubber: PiiScrubber) -> list[LabelRecord]:
    """The labels with their critiques and corrections scrubbed; prompts and model outputs are
    not the annotators' writing and stay as they are."""
    return [
        dataclasses.replace(
            label, critique=scrubber(label.critique), correction=scrubber(label.correction)
        )
        for label in records
    ]


def _pattern_recognizers() -> list:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer, PhoneRecognizer

    # Presidio's check that an address's domain is real would fetch the public suffix list;
    # the copy bundled with tldextract is enough, and exports must work offline.
    offline_suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_suffixes(pattern_text).fqdn != ""

    return [
        OfflineEmailRecognizer(supported_language=LANGUAGE),
        PhoneRecognizer(supported_language=LANGUAGE),
    ]


def _nlp_engine(model: str):
    """No language model for the patterns alone; else the named spaCy pipeline, which must be
    installed already (Presidio would download a missing one)."""
    if not model:
        from presidio_analyzer.nlp_engine import NoOpNlpEngine

        return NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    if not (spacy.util.is_package(model) or Path(model).is_dir()):
        raise ConfigError(
            f"--pii_model = {model!r}: no spaCy pipeline of that name is installed "
            "and no such folder; install one (python -m spacy download "
            "en_core_web_lg) or give a pipeline folder, or leave --pii_model empty "
            "to scrub e-mail addresses and phone numbers only"
        )
    engine = SpacyNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": model}])
    try:
        engine.load()
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"--pii_model = {model!r}: spaCy cannot load it ({error}); give an "
            "installed pipeline or a folder saved by nlp.to_disk"
        ) from None
    return engine
