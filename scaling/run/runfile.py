"""The one reader of a run directory's spec.json: the run spec and its layout.

Every training entry reads a run through `read_run_file` (the spec re-validated, its
layout checked against the batch), so a spec.json that is missing, not JSON or wrong is
the same one-line SpecError naming the file wherever the run is started.
"""

from __future__ import annotations

import json
from pathlib import Path

from scaling.errors import SpecError
from scaling.plan.layout import Layout
from scaling.rundir import SPEC
from scaling.sweep.spec import RunSpec


def read_run_file(path: Path) -> tuple[RunSpec, Layout | None]:
    """A run's spec.json (or a run directory holding one): the run spec and its layout
    (None when it has none), checked against each other; a SpecError that names the
    file otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / SPEC
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise SpecError("file not found", file=str(path)) from None
    except ValueError as exc:
        raise SpecError(f"invalid JSON: {exc}", file=str(path)) from None
    spec = RunSpec.from_dict(data, file=str(path))
    if "layout" not in data:
        return spec, None
    try:
        layout = Layout.from_dict(data["layout"])
    except (KeyError, TypeError, ValueError):
        raise SpecError(
            "expected {micro_batch, accum_steps, gpus, nodes}", file=str(path), key="layout"
        ) from None
    batch = int(spec.config["batch_size"])
    if layout.micro_batch * layout.accum_steps * layout.gpus != batch:
        raise SpecError(
            f"micro_batch x accum_steps x gpus = {layout.micro_batch} x {layout.accum_steps} x "
            f"{layout.gpus} must equal the batch size {batch}",
            file=str(path),
            key="layout",
        )
    return spec, layout
