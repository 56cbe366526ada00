"""`StrEnum`: decisions travel as enums, and print as their value (enum.StrEnum, 3.11+).

Members are strings (`State.FINISHED == "finished"`, usable as dict keys and JSON) whose
`str()` and f-string form is the value, on every Python the package supports.
"""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
