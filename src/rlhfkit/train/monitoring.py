"""A run's reward-hacking monitors (``eval.monitors``) as the loops meet them: checked after each
step (round), logged, announced, saved, sent to people, and able to end the run.

``RunMonitors.check`` runs on every rank alike (the metrics are reduced and the held-out
evaluations gathered before it), so ``stop`` is the same decision everywhere; rank 0 alone
prints, writes ``monitors.json`` and talks to the feedback store. ``monitors.json`` holds every
alert (the step a monitor started firing, its value and why), each monitor's latest verdict,
and the monitors that could not run with the reason; report.html and the summary read it.

With ``monitor.to_studio CAMPAIGN`` an alert found on a held-out evaluation sends its flagged
prompts to the feedback studio as pairwise tasks, the start's completion against the current
one in a random order, so people judge whether the model got better or only the reward rose.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfkit import distributed, progress
from rlhfkit.eval.monitors import MonitorCfg, Verdict, evaluation_verdicts, kl_verdicts, off_reasons

MONITORS_FILE = "monitors.json"
CAMPAIGNS_DIR = "campaigns"  # where `rlhfkit label` keeps a campaign's database by default


def reward_range(reward: Any) -> tuple[float, float] | None:
    """The score range a reward records from its own training data (``rm:`` rewards), if any."""
    recorded = getattr(getattr(reward, "fn", reward), "score_range", None)
    return (float(recorded[0]), float(recorded[1])) if recorded else None


class RunMonitors:
    """The monitors of one run; ``check`` after every step, ``stop`` says whether to end it."""

    def __init__(
        self,
        cfg: MonitorCfg,
        run_dir: Path,
        held_out: Any,
        reward: Any,
        keeps_reference: bool,
        start_model: str,
    ):
        self.cfg, self.run_dir, self.held_out = cfg, run_dir, held_out
        self.keeps_reference, self.start_model = keeps_reference, start_model
        self.score_range = reward_range(reward)
        judged = held_out is not None and "judge" in held_out.rewards
        self.off = off_reasons(
            cfg, judged, held_out is not None, keeps_reference, self.score_range is not None
        )
        self.kl_history: list[float] = []
        self.alerts: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}
        self.stop = False

    @property
    def path(self) -> Path:
        return self.run_dir / MONITORS_FILE

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps, so a resumed run judges as an uninterrupted one: every
        step's KL (metrics.jsonl holds only the logged steps), the alerts, and each monitor's
        latest verdict (whether it is firing already: an alert is announced once)."""
        return {"kl_history": list(self.kl_history), "alerts": self.alerts, "latest": self.latest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_history = list(state["kl_history"])
        self.alerts, self.latest = list(state["alerts"]), dict(state["latest"])
        if distributed.is_main():  # monitors.json as it was at the checkpoint
            self._write()

    def check(
        self, step: int, metrics: dict[str, Any], evaluated: bool, policy: Any = None
    ) -> dict[str, float]:
        """Every monitor this step has the data for; their metrics (``monitor/<name>``: 1 when
        it fires, ``monitor/<name>_value``: what it measured)."""
        verdicts: list[Verdict] = []
        if self.keeps_reference and "kl" in metrics:
            verdicts += kl_verdicts(self.kl_history, metrics["kl"], self.cfg)
            self.kl_history.append(float(metrics["kl"]))
        if evaluated and self.held_out is not None:
            evaluations = self.held_out.evaluations
            verdicts += evaluation_verdicts(evaluations, self.cfg, self.score_range)
        for verdict in verdicts:
            was_firing = self.latest.get(verdict.name, {}).get("fired", False)
            self.latest[verdict.name] = {
                "step": step,
                "value": _finite(verdict.value),
                "fired": verdict.fired,
                "reason": verdict.reason,
            }
            if verdict.fired and not was_firing:  # announced once, when it starts firing
                self._alert(step, verdict, evaluated, policy)
        if verdicts and distributed.is_main():
            self._write()
        out: dict[str, float] = {}
        for verdict in verdicts:
            out[f"monitor/{verdict.name}"] = float(verdict.fired)
            if (value := _finite(verdict.value)) is not None:
                out[f"monitor/{verdict.name}_value"] = value
        return out

    def _alert(self, step: int, verdict: Verdict, evaluated: bool, policy: Any) -> None:
        alert = {"step": step, "monitor": verdict.name, "reason": verdict.reason}
        alert["value"] = _finite(verdict.value)
        if distributed.is_main():
            progress.alert(f"step {step}: {verdict.name}: {verdict.reason}")
            # a pair needs a start and a now: the first evaluation has only the start
            started = evaluated and len(self.held_out.evaluations) > 1
            if self.cfg.to_studio and started and verdict.flagged:
                alert["studio_tasks"] = self._to_studio(step, verdict, policy)
        self.alerts.append(alert)
        if self.cfg.stop_on_alert:
            self.stop = True

    def summary(self) -> dict[str, Any]:
        """For summary.json: the alerts, each monitor's latest verdict, those that were off."""
        return {
            "alerts": self.alerts,
            "fired": sorted({a["monitor"] for a in self.alerts}),
            "off": self.off,
        }

    def _write(self) -> None:
        from rlhfkit.data.files import atomic_file

        document = {"format": "rlhfkit.monitors/1", **self.summary(), "latest": self.latest}
        with atomic_file(self.path) as f:
            f.write(json.dumps(document, indent=1) + "\n")

    # --- to the feedback studio ------------------------------------------------------------------

    def _to_studio(self, step: int, verdict: Verdict, policy: Any) -> int:
        """The flagged held-out prompts as pairwise tasks (start vs now) in the campaign, made
        if new; how many tasks were added."""
        from rlhfkit.feedback.campaign import weights_hash
        from rlhfkit.feedback.store import NotFoundError, open_store

        evaluations = self.held_out.evaluations
        first, now = evaluations[0], evaluations[-1]
        chosen = list(verdict.flagged[: self.cfg.studio_samples])
        start_hash = weights_hash(self.start_model)
        now_model, now_hash = f"{self.run_dir} step {step}", _weights_digest(policy)
        rng = random.Random(f"{self.cfg.to_studio}:{step}:{verdict.name}")
        campaign = self.cfg.to_studio
        target = self.cfg.studio_db or str(Path(CAMPAIGNS_DIR) / campaign / "feedback.db")
        with open_store(target) as store, store.transaction():
            try:
                store.campaign_settings(campaign)
            except NotFoundError:
                store.create_campaign(campaign, task_kinds=("pairwise",))
            for i in chosen:
                prompt = store.add_prompt(
                    campaign,
                    self.held_out.document()["prompts"][i],
                    {"run": str(self.run_dir), "step": step, "monitor": verdict.name},
                )
                generation = {"held_out": True, "seed": self.held_out.seed}
                before = store.add_output(
                    prompt,
                    first["completions"][i],
                    model=self.start_model,
                    model_hash=start_hash,
                    generation={**generation, "step": first["step"]},
                )
                after = store.add_output(
                    prompt,
                    now["completions"][i],
                    model=now_model,
                    model_hash=now_hash,
                    generation={**generation, "step": step},
                )
                store.add_task(campaign, "pairwise", rng.sample([before, after], 2))
        return len(chosen)


def _weights_digest(model: Any) -> str:
    """sha256 of the policy's weights as they are now (the checkpoint may come later). A
    data-parallel model's shards live on several ranks: then its name in the run says it."""
    if model is None or distributed.active():
        return "unhashed: data-parallel run, see its checkpoint"
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte()).numpy())
    return digest.hexdigest()


def _byte() -> Any:
    import torch

    return torch.uint8


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def build(
    cfg: Any, run_dir: Path, held_out: Any, reward: Any, keeps_reference: bool
) -> RunMonitors | None:
    """The run's monitors from its ``monitor`` group; None when they are off."""
    if not cfg.monitor.enabled:
        return None
    return RunMonitors(cfg.monitor, run_dir, held_out, reward, keeps_reference, cfg.model.path)


class Oversight:
    """What every loop does around its steps (``kit.Session``'s steps, ``Rounds``' rounds) with
    the held-out evaluation and the monitors: evaluate the starting model, complete each step's
    metrics with the evaluation when due and the monitors' check, end the run early at an alert
    (evaluated there: it is the run's "after"), and summarise."""

    def __init__(
        self, cfg: Any, run_dir: Path, held_out: Any, reward: Any, keeps_reference: bool, total: int
    ):
        self.held_out: Any = held_out  # eval.training.TrainingEval, or None
        self.total = total
        self.monitors = build(cfg, run_dir, held_out, reward, keeps_reference)
        self.last = total  # the last step run: earlier when an alert ends the run

    def stateful(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (the monitors' state)."""
        return {"monitors": self.monitors} if self.monitors is not None else {}

    def resume(self, done: int) -> None:
        if self.held_out is not None:
            self.held_out.resume(done)

    def start(self, model: Any, tokenizer: Any) -> dict[str, Any] | None:
        """The starting model's held-out metrics with the monitors' check; None without any."""
        if self.held_out is None:
            return None
        metrics = self.held_out.evaluate(model, tokenizer, 0)
        if self.monitors is not None:
            metrics.update(self.monitors.check(0, metrics, evaluated=True))
        return metrics

    def left(self, done: int) -> Iterator[int]:
        """The steps after ``done``; none after a monitor's alert with ``monitor.stop_on_alert``
        (checked before each: an alert at the start's evaluation trains nothing)."""
        for step in range(done + 1, self.total + 1):
            if self.stopping:
                self.last = step - 1
                return
            yield step

    @property
    def stopping(self) -> bool:
        return self.monitors is not None and self.monitors.stop

    def after(
        self, step: int, metrics: dict[str, Any], model: Any, tokenizer: Any
    ) -> tuple[dict[str, Any], bool]:
        """``metrics`` with the held-out figures (every ``eval.every`` steps, the last, and the
        one an alert ends the run at) and the monitors' check; whether it was evaluated."""
        held_out, monitors = self.held_out, self.monitors
        evaluated = False
        if held_out is not None and held_out.due(step):
            metrics = {**metrics, **held_out.evaluate(model, tokenizer, step)}
            evaluated = True
        if monitors is not None:
            metrics = {**metrics, **monitors.check(step, metrics, evaluated, model)}
            if monitors.stop and held_out is not None and not evaluated:
                metrics = {**metrics, **held_out.evaluate(model, tokenizer, step)}
                evaluated = True
        return metrics, evaluated

    def summary(self, unit: str) -> dict[str, Any]:
        """For summary.json: the evaluations, the monitors, and where an alert ended the run."""
        return {
            **({"eval": self.held_out.summary()} if self.held_out is not None else {}),
            **({"monitors": self.monitors.summary()} if self.monitors is not None else {}),
            **(
                {"stopped_early": f"at {unit} {self.last} of {self.total}: an alert"}
                if self.last < self.total
                else {}
            ),
        }
