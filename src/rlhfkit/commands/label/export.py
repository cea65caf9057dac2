"""``label export``: a campaign's labels as a dataset that ``reward``, ``dpo`` and ``sft`` read."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.commands.label.options import CampaignOptions, open_campaign
from rlhfkit.config import Problem
from rlhfkit.errors import DataError, RlhfkitError


@dataclass(frozen=True)
class ExportConfig(CampaignOptions):
    """Write a campaign's labels as a dataset that reward, dpo and sft read."""

    format: Literal["pairs", "ratings", "binary", "critiques", "sft"] = "pairs"
    """Dataset form (also --as): pairs (reward, dpo), ratings (reward), binary (dpo --algo.loss
    kto), critiques, sft (corrections)."""
    output: str = ""
    """The JSONL file to write (required)."""
    overwrite: bool = False
    """Replace the output file if it exists."""
    include_gold: bool = False
    """Also export labels of gold tasks (the campaign's quality checks)."""
    include_flagged: bool = False
    """Also make chosen, desirable and sft rows from outputs a label flagged."""
    pseudonymise: bool = False
    """Name annotators by pseudonyms (ann-..., a keyed hash, the same throughout the campaign),
    give dates instead of times, and replace sign-in names written in critiques and corrections
    (docs/privacy.md)."""
    scrub_pii: bool = False
    """Replace e-mail addresses and phone numbers in critiques and corrections by placeholders,
    and names too with --pii_model (needs pip install 'rlhfkit[pii]')."""
    pii_model: str = ""
    """spaCy pipeline that finds names for --scrub_pii: an installed package (en_core_web_lg) or
    a folder (empty = names are not scrubbed)."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        problem = _output_problem(self.output, self.overwrite)
        if problem:
            yield Problem("output", self.output, problem)
        if self.pii_model and not self.scrub_pii:
            yield Problem(
                "pii_model",
                self.pii_model,
                "is used by --scrub_pii only; pass --scrub_pii too, or drop --pii_model",
            )


def _output_problem(output: str, overwrite: bool) -> str | None:
    if not output:
        return "is required; pass --output FILE.jsonl"
    path = Path(os.path.expanduser(output))
    if path.suffix.lower() not in (".jsonl", ".json"):
        return "exports are JSONL; give a path ending in .jsonl"
    if path.is_dir():
        return "is a directory; give a file name such as pairs.jsonl"
    if path.exists() and not overwrite:
        return "already exists; pass --overwrite to replace it or choose another --output"
    return None


def export(cfg: ExportConfig) -> None:
    from rlhfkit.feedback.export import export as export_labels
    from rlhfkit.feedback.export import write_export
    from rlhfkit.feedback.privacy import campaign_records

    scrubber = _scrubber(cfg)  # before the database: a missing extra fails first
    with open_campaign(cfg) as store:
        records, mentions = campaign_records(store, cfg.campaign, pseudonymous=cfg.pseudonymise)
    if scrubber is not None:
        from rlhfkit.feedback.pii import scrub_records

        records = scrub_records(records, scrubber)
    result = export_labels(
        records, cfg.format, include_gold=cfg.include_gold, include_flagged=cfg.include_flagged
    )
    skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(result.skipped.items()))
    if not result.rows:
        raise DataError(
            f"campaign {cfg.campaign!r}: its {len(records)} labels give no "
            f"{cfg.format} rows"
            + (f" (skipped: {skipped})" if skipped else "")
            + "; label more, or choose another --as"
        )
    problem = _output_problem(cfg.output, cfg.overwrite)  # it may have appeared meanwhile
    if problem:
        raise RlhfkitError(f"output {cfg.output!r} {problem}")
    write_export(os.path.expanduser(cfg.output), result.rows)
    print(
        f"wrote {len(result.rows)} {cfg.format} rows from {len(records)} labels to "
        f"{cfg.output}" + (f"; skipped: {skipped}" if skipped else "")
    )
    if cfg.pseudonymise:
        print(
            f"pseudonymised: annotators as ann-... (stable within {cfg.campaign!r}), dates "
            f"instead of times, {mentions} sign-in names in free text replaced"
        )
    if scrubber is not None:
        replaced = (
            ", ".join(f"{entity} {count}" for entity, count in sorted(scrubber.replaced.items()))
            or "nothing found"
        )
        print(f"scrubbed critiques and corrections: {replaced}; looked for {scrubber.describe()}")


def _scrubber(cfg: ExportConfig):
    if not cfg.scrub_pii:
        return None
    from rlhfkit.feedback.pii import PiiScrubber

    return PiiScrubber(cfg.pii_model)
