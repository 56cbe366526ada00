"""What an advised or adaptive submit is asked (light: the CLI imports it at start-up):
the question's kind and the adaptive loop's goal (`--budget H --until "interval < X"`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from scaling.enums import StrEnum
from scaling.errors import SpecError


class QuestionKind(StrEnum):
    GAP_AT = "gap-at"
    CLOSES = "closes"
    FRONTIER = "frontier"

    @classmethod
    def parse(cls, text: str | None) -> QuestionKind | None:
        """`--question`'s value (None: the default question); else one line, exit 2."""
        if text is None:
            return None
        try:
            return cls(text)
        except ValueError:
            allowed = ", ".join(str(k) for k in cls)
            raise SpecError(f"--question must be one of {allowed} (got {text!r})") from None


class Stop(StrEnum):
    """Why an adaptive loop stopped."""

    ANSWERED = "answered"  # the interval is narrower than asked
    BUDGET = "budget"  # the next advised run would overspend
    NO_CANDIDATE = "no candidate"  # no run narrows the interval further


UNTIL = re.compile(r"^\s*interval\s*<\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$")


@dataclass(frozen=True)
class Goal:
    budget: float  # device-hours
    target: float  # the interval's width to reach, in the question's unit
    kind: QuestionKind | None
    params: float | None
    threshold: float
    flops: float | None

    @classmethod
    def of(
        cls,
        adaptive: bool,
        budget: float | None,
        until: str | None,
        kind: QuestionKind | None,
        params: float | None,
        threshold: float,
        flops: float | None,
    ) -> Goal:
        """From submit's options; bad input is one line (SpecError, exit 2)."""
        if not adaptive:
            raise SpecError("--budget and --until go with --adaptive")
        if budget is None or not (math.isfinite(budget) and budget > 0):
            raise SpecError(f"--budget must be a positive number of device-hours, got {budget}")
        match = UNTIL.match(until or "")
        if match is None:
            raise SpecError(
                f'--until must read "interval < X" (X: a positive width in the question\'s '
                f"unit), got {until!r}"
            )
        target = float(match.group(1))
        if not target > 0:
            raise SpecError(f"--until: the width must be positive, got {target}")
        return cls(budget, target, kind, params, threshold, flops)
