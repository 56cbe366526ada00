"""Whether a run converged, judged from its training curve: the one verdict every reader uses.

A gap to a supervised baseline says something about the method only when the baseline
trained to the end of its curve; one stopped while its loss still fell says more about
its schedule (a digits baseline of 10 epochs ended at a training top-1 of 0.36, its
loss still falling, and made a "gap" of 60 points). So every run is judged from the
per-epoch training records it wrote (metrics.jsonl), never from its epoch count:

- **loss still falling**: over the last fifth of the epochs (at least one) the loss fell
  by more than LOSS_SHARE of its whole fall (first epoch to the end). Each end is the
  mean over that window, so one noisy epoch neither hides nor fakes a trend.
- **training accuracy still rising** (classifiers): the training accuracy rose by more
  than TOP1_SHARE of its whole rise over the last fifth.
- **far from its plateau** (classifiers): the training loss is still above CHANCE_SHARE
  of the cross-entropy of guessing, ln(classes): the network has not fit its training
  data, whatever the curve's shape. A cosine schedule flattens every curve at its end (the
  learning rate goes to zero), so a short run can look level while far from where the
  same network levels off: the 10-epoch digits baseline moved only 7% of its fall in its
  last fifth, but ended at 81% of the chance-level loss (converged ones end at 11-15%).
- **no fall**: the loss did not fall at all (the network learnt nothing).
- **one epoch**: there is no curve; a single epoch (or none recorded) is never shown
  converged.

The accuracy criteria apply to methods whose `MethodInfo.accuracy_plateaus` (a
classifier's training accuracy); a contrastive method's training "accuracy" (the positive
among 2N - 1 views) keeps rising with its loss and says nothing more. The thresholds leave
room on both sides of real curves (tests/golden/curves, measured on this machine: the
quickstart's runs, every width and both methods, and the digits baseline above).

The trainer judges its run as it ends and records the verdict in result.json
(`convergence`); `scaling status`, the MLflow run (tags `scaling.converged`,
`scaling.convergence`), the results table, the gap table, the headline and the HTML
report all read that verdict (`of_result`, which judges metrics.jsonl for runs that
finished before the trainer recorded one, without the chance-level criterion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: the share of the loss's whole fall a converged run may still make in the last fifth
#: of its epochs (the quickstart's runs: at most 0.04 supervised, 0.10 SimCLR)
LOSS_SHARE = 0.15
#: the same for the rise of a classifier's training accuracy (the quickstart's: at most
#: 0.036; the 10-epoch digits baseline: 0.063)
TOP1_SHARE = 0.05
#: a classifier's training loss at the end, as a share of ln(classes), above which it has
#: not fit its training data (the quickstart's: 0.11-0.15; the digits baseline: 0.81)
CHANCE_SHARE = 0.5
LAST = 0.2  # the window: the last fifth of the epochs


@dataclass(frozen=True)
class Convergence:
    """The verdict on one run's training curve and what it rests on."""

    converged: bool
    epochs: int  # epochs in the curve judged
    train_top1: float | None  # the last epoch's training accuracy (a fraction)
    loss_share: float | None  # share of the loss's fall made in the last window
    top1_share: float | None  # share of the accuracy's rise made in the last window
    reasons: tuple[str, ...] = ()  # why not converged: "loss still falling", ...

    def describe(self) -> str:
        """ "train top-1 0.35, loss still falling" (what a reader needs to see why)."""
        parts = [] if self.train_top1 is None else [f"train top-1 {self.train_top1:.2f}"]
        return ", ".join(parts + list(self.reasons or ("converged",)))

    @property
    def label(self) -> str:
        return "converged" if self.converged else "not converged"

    def to_dict(self) -> dict[str, Any]:
        return {
            "converged": self.converged,
            "epochs": self.epochs,
            "train_top1": self.train_top1,
            "loss_share": self.loss_share,
            "top1_share": self.top1_share,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Convergence | None:
        """The verdict result.json recorded; None when it holds none (or a broken one)."""
        try:
            return cls(
                bool(data["converged"]),
                int(data["epochs"]),
                _fraction(data.get("train_top1")),
                _fraction(data.get("loss_share")),
                _fraction(data.get("top1_share")),
                tuple(str(r) for r in data.get("reasons") or ()),
            )
        except (KeyError, TypeError, ValueError):
            return None


def judge(
    records: Sequence[Mapping[str, Any]],
    accuracy_plateaus: bool = True,
    classes: int | None = None,
) -> Convergence:
    """The verdict on a run's per-epoch records (metrics.jsonl: `loss`, `top1`);
    `accuracy_plateaus`: a classifier's curve (the accuracy criteria), over `classes`
    classes (None: the chance-level criterion is not applied)."""
    losses = _series(records, "loss")
    top1 = _series(records, "top1")
    last_top1 = top1[-1] if top1 else None
    n = len(losses)
    if n < 2:
        why = "one epoch: no curve to judge" if n else "no training curve recorded"
        return Convergence(False, n, last_top1, None, None, (why,))
    reasons = []
    loss_share = _late_share(losses)
    if losses[0] - _tail(losses) <= 0:
        reasons.append("the loss did not fall")
    elif loss_share > LOSS_SHARE:
        reasons.append("loss still falling")
    top1_share = None
    if accuracy_plateaus and len(top1) == n:
        top1_share = _late_share([-a for a in top1])
        if _tail(top1) - top1[0] > 0 and top1_share > TOP1_SHARE:
            reasons.append("training accuracy still rising")
    if accuracy_plateaus and classes and classes > 1:
        chance = _tail(losses) / math.log(classes)
        if chance > CHANCE_SHARE:
            reasons.append(f"loss still {chance:.0%} of chance level")
    return Convergence(not reasons, n, last_top1, loss_share, top1_share, tuple(reasons))


def of_result(
    result: Mapping[str, Any] | None,
    records: Sequence[Mapping[str, Any]],
    accuracy_plateaus: bool = True,
) -> Convergence | None:
    """A finished run's verdict: the one its trainer recorded in result.json, else judged
    now from its records (runs finished before verdicts were recorded); None for a run
    that has not finished."""
    if result is None:
        return None
    recorded = result.get("convergence")
    if isinstance(recorded, Mapping):
        verdict = Convergence.from_dict(recorded)
        if verdict is not None:
            return verdict
    return judge(records, accuracy_plateaus)


def _late_share(values: Sequence[float]) -> float:
    """How much of the fall from the first value to the end happened in the last window:
    (mean of the window before it - mean of the last window) / (first - mean of the last);
    0 when there was no fall."""
    n = len(values)
    k = max(1, round(LAST * n))
    end = _tail(values)
    before = sum(values[-2 * k : -k]) / k if n >= 2 * k else values[0]
    total = values[0] - end
    return (before - end) / total if total > 0 else 0.0


def _tail(values: Sequence[float]) -> float:
    k = max(1, round(LAST * len(values)))
    return sum(values[-k:]) / k


def _series(records: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    out = []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _fraction(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
