"""Glue shared by commands: load a sweep and a profile, plan, filter with --only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from scaling.errors import SpecError
from scaling.plan.planner import Plan, make_plan
from scaling.sweep.cluster import load_profile
from scaling.sweep.spec import load_sweep


def build_plan(
    sweep_path: Path | str,
    cluster: Path | str | None,
    overrides: list[str],
    only: str | None,
    profile_overrides: list[str] | None = None,
) -> Plan:
    sweep = load_sweep(sweep_path, overrides)
    profile = load_profile(cluster, profile_overrides)
    if profile.backend == "slurm":  # submitit's parameter check, before any cost is computed
        from scaling.run.backends.slurm import check_profile

        check_profile(profile, str(cluster))
    plan = make_plan(sweep, profile)
    if only:
        filters = parse_only(only)
        kept = tuple(r for r in plan.runs if matches(r.row(), filters))
        plan = replace(plan, runs=kept)
    return plan


def parse_only(only: str) -> dict[str, str]:
    """`method=simclr,depth=18` -> {"method": "simclr", "depth": "18"}."""
    filters = {}
    for part in only.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--only expects key=value[,key=value...], got {part!r}")
        filters[key.strip()] = value.strip()
    return filters


def matches(row: dict[str, Any], filters: dict[str, str]) -> bool:
    for key, want in filters.items():
        if key not in row:
            raise SpecError(f"--only: unknown column {key!r}; valid: {', '.join(sorted(row))}")
        have = row[key]
        if isinstance(have, (int, float)) and not isinstance(have, bool):
            try:
                if float(have) != float(want):
                    return False
            except ValueError:
                return False
        elif str(have) != want:
            return False
    return True
