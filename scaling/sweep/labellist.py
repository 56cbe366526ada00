"""A label fraction fixed by a file of training image names (the official
google-research/simclr `imagenet_subsets/1percent.txt`: one name a line, such as
`n01440764_10026.JPEG`), instead of drawn from the seed.

In a sweep: `label_fraction: [1.0, {fraction: 0.01, file: lists/1percent.txt}]`. The
`fraction` is the share the report groups by (a gap per fraction, as for a drawn one);
the file fixes which images, for every method and seed. A relative `file` is read from
the sweep file's folder. The file's content (its sha256), never its path, is part of the
identity: a moved file changes nothing, an edited one makes new runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaling.errors import SpecError

#: the one data set whose images have names (`label_fraction` files need it)
NAMED_DATASET = "imagefolder"


def read_names(path: Path, file: str, key: str) -> tuple[list[str], str]:
    """(names, sha256 of the file's bytes) of a list of image names, one a line (blank
    lines and surrounding spaces ignored); a one-line SpecError when unreadable or empty."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            f"cannot read the list of image names {path}: {exc.strerror or exc}",
            file=file,
            key=key,
        ) from None
    try:
        names = [line.strip() for line in data.decode().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise SpecError(
            f"{path} is not a text file of image names (one a line, UTF-8)", file=file, key=key
        ) from None
    if not names:
        raise SpecError(f"{path} names no images (one a line)", file=file, key=key)
    return names, hashlib.sha256(data).hexdigest()


def label_list(value: Mapping[str, Any], sweep_file: str, key: str) -> tuple[float, dict]:
    """(fraction, list) of a `{fraction, file}` entry of `label_fraction`: the list as a
    run carries it (`path` resolved, `sha256` its identity, `images` the names' count,
    `sweep` and `key` where it was given, for errors when the run starts)."""
    from scaling.sweep.identity import check_fraction

    extra = sorted(set(value) - {"fraction", "file"})
    if extra or "fraction" not in value or "file" not in value:
        raise SpecError(
            "must be a number in (0, 1] or {fraction: <number in (0, 1]>, file: <a file "
            f"of training image names, one a line>}}; got keys {', '.join(map(str, value))}",
            file=sweep_file,
            key=key,
        )
    fraction = check_fraction(value["fraction"], sweep_file, f"{key}.fraction")
    if not isinstance(value["file"], str) or not value["file"]:
        raise SpecError(
            "must be a path to a file of image names", file=sweep_file, key=f"{key}.file"
        )
    path = Path(value["file"]).expanduser()
    if not path.is_absolute():
        path = Path(sweep_file).resolve().parent / path
    names, sha = read_names(path, sweep_file, f"{key}.file")
    info = {
        "path": str(path),
        "sha256": sha,
        "images": len(set(names)),
        "sweep": sweep_file,
        "key": f"{key}.file",
    }
    return fraction, info


def checked_list(value: Any, file: str, key: str) -> dict[str, Any]:
    """A run spec's `label_list` read back (spec.json): a mapping with path and sha256."""
    if not isinstance(value, Mapping) or not all(
        isinstance(value.get(k), str) for k in ("path", "sha256")
    ):
        raise SpecError(
            "must be a mapping with path and sha256 (a list of image names)", file=file, key=key
        )
    return {
        "path": value["path"],
        "sha256": value["sha256"],
        "images": int(value.get("images", 0)),
        "sweep": str(value.get("sweep", file)),
        "key": str(value.get("key", key)),
    }


def listed_names(info: Mapping[str, Any]) -> list[str]:
    """The names of a run's list, read when it starts: the file must still hold the
    content planned (its sha256), else a one-line SpecError (plan again)."""
    names, sha = read_names(Path(info["path"]), info["sweep"], info["key"])
    if sha != info["sha256"]:
        raise SpecError(
            f"{info['path']} changed since the run was planned (sha256 {sha[:12]}, planned "
            f"{info['sha256'][:12]}): an edited list is another run; plan and submit again",
            file=info["sweep"],
            key=info["key"],
        )
    return list(dict.fromkeys(names))


def resolve_names(
    names: list[str], folder_names: list[tuple[str, str]], info: Mapping[str, Any], where: str
) -> dict[str, int]:
    """Each listed name's position in `folder_names` ((class, file name) per row, as the
    folder is indexed): a name is a file name (`n01440764_10026.JPEG`, unique in the
    folder) or `class/file`. The first the folder lacks, or a file name in two class
    folders, is a one-line SpecError naming the sweep file and key."""
    by_name: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, (cls, name) in enumerate(folder_names):
        by_name[f"{cls}/{name}"] = i
        if name in by_name:
            ambiguous.add(name)
        by_name[name] = i
    out: dict[str, int] = {}
    for n in names:
        if n in ambiguous:
            raise SpecError(
                f"{info['path']} names {n!r}, a file name in several class folders of "
                f"{where}: write it as <class>/{n}",
                file=info["sweep"],
                key=info["key"],
            )
        if n not in by_name:
            raise SpecError(
                f"{info['path']} names {n!r}, which {where} lacks (the first of the list's "
                "names not there; names are file names, or <class>/<file>)",
                file=info["sweep"],
                key=info["key"],
            )
        out[n] = by_name[n]
    return out
