"""The functional forms a scaling law may take, each in log space with its Jacobian.

Every form predicts log(err) from log-scaled coordinates u = log(x / x_ref) (one column
per variable: parameters, or parameters and images seen), for K parameter rows at once:

- saturating: err = E + A x^-alpha (Hoffmann et al. 2022's form in one variable; today's
  default), theta = (log E, log A', alpha);
- pure: err = A x^-alpha (no floor), theta = (log A', alpha): a straight line in log-log;
- broken: err = A x^-alpha1 (1 + (x / x_b)^(1/s))^(-(alpha2 - alpha1) s), a smoothly
  broken power law (Caballero et al. 2022, one break, no floor, the sharpness s fixed at
  SHARPNESS so that 4 parameters remain for 6-8 sizes), theta = (log A', alpha1, alpha2,
  log x_b'); the break is bounded to the range of the data, where it can be seen;
- joint: err = E + A N^-alpha + B D^-beta over parameters N and images seen D (Hoffmann
  et al. 2022, Approach 3), theta = (log E, log A', alpha, log B', beta).

A' and B' are in units of x / x_ref; `natural` turns them back into the units of x.
The solver (scaling.report.solver) needs only `log_pred`, `jacobian`, the bounds and
`starts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scaling.enums import StrEnum

#: Bounds shared by the forms: an error floor in (1e-8, 1], exponents in [0, 5].
LOG_E_BOUNDS = (math.log(1e-8), 0.0)
LOG_A_BOUNDS = (-30.0, 10.0)
EXPONENT_BOUNDS = (0.0, 5.0)
#: The broken form's sharpness in natural-log units of x: the slope changes over about
#: a factor e^(2 s) (here ~2x) around the break.
SHARPNESS = 0.35


class FormName(StrEnum):
    SATURATING = "saturating"
    PURE = "pure"
    BROKEN = "broken"
    JOINT = "joint"


@dataclass(frozen=True)
class Form:
    """A law's shape: parameter names, bounds, its log prediction and Jacobian."""

    name: FormName
    formula: str
    params: tuple[str, ...]  # internal parameter names, in theta's order
    dims: int  # variables: 1 (parameters) or 2 (parameters, images seen)
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    log_pred: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (K,p), (m,dims) -> (K,m)
    jacobian: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # -> (K,m,p)
    starts: Callable[[np.ndarray, np.ndarray], np.ndarray]  # u (n,dims), err (n,) -> (S,p)
    #: the smallest number of distinct design points that leaves one degree of freedom
    min_points: int

    @property
    def n_params(self) -> int:
        return len(self.params)

    def bounds(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds for data at u (the broken form's break lies inside)."""
        lo, hi = np.array(self.lower, float), np.array(self.upper, float)
        if self.name is FormName.BROKEN:
            lo[3], hi[3] = float(u[:, 0].min()), float(u[:, 0].max())
        return lo, hi


# ----------------------------------------------------------------------------- saturating


def _sat_pred(t: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.logaddexp(t[:, :1], t[:, 1:2] - t[:, 2:3] * u[None, :, 0])


def _sat_jac(t: np.ndarray, u: np.ndarray, lp: np.ndarray) -> np.ndarray:
    d_e = np.exp(t[:, :1] - lp)
    d_a = np.exp(t[:, 1:2] - t[:, 2:3] * u[None, :, 0] - lp)
    return np.stack([d_e, d_a, -u[None, :, 0] * d_a], axis=2)


def _sat_starts(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """E in {0, .3, .6, .9} x min(err), alpha in 6 values, log A' by projection."""
    out = []
    for frac in (0.0, 0.3, 0.6, 0.9):
        big_e = frac * float(y.min())
        for alpha in (0.05, 0.15, 0.3, 0.6, 1.2, 2.5):
            a = float(np.median(np.log(np.maximum(y - big_e, 1e-6)) + alpha * u[:, 0]))
            out.append((math.log(max(big_e, 1e-8)), a, alpha))
    return np.array(out)


# ----------------------------------------------------------------------------- pure


def _pure_pred(t: np.ndarray, u: np.ndarray) -> np.ndarray:
    return t[:, :1] - t[:, 1:2] * u[None, :, 0]


def _pure_jac(t: np.ndarray, u: np.ndarray, lp: np.ndarray) -> np.ndarray:
    ones = np.ones_like(lp)
    return np.stack([ones, -u[None, :, 0] * ones], axis=2)


def _pure_starts(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = []
    for alpha in (0.05, 0.3, 1.0):
        out.append((float(np.median(np.log(y) + alpha * u[:, 0])), alpha))
    return np.array(out)


# ----------------------------------------------------------------------------- broken


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _broken_pred(t: np.ndarray, u: np.ndarray) -> np.ndarray:
    z = (u[None, :, 0] - t[:, 3:4]) / SHARPNESS
    return t[:, :1] - t[:, 1:2] * u[None, :, 0] - (t[:, 2:3] - t[:, 1:2]) * SHARPNESS * _softplus(z)


def _broken_jac(t: np.ndarray, u: np.ndarray, lp: np.ndarray) -> np.ndarray:
    uu = u[None, :, 0] * np.ones_like(lp)
    z = (uu - t[:, 3:4]) / SHARPNESS
    sp = SHARPNESS * _softplus(z)
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
    return np.stack([np.ones_like(lp), -uu + sp, -sp, (t[:, 2:3] - t[:, 1:2]) * sig], axis=2)


def _broken_starts(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = []
    for q in (0.3, 0.5, 0.7):
        b = float(np.quantile(u[:, 0], q))
        for a1, a2 in ((0.5, 0.05), (0.2, 0.6), (0.05, 0.5), (1.0, 0.2)):
            a = float(np.median(np.log(y) + a1 * u[:, 0]))
            out.append((a, a1, a2, b))
    return np.array(out)


# ----------------------------------------------------------------------------- joint


def _joint_pred(t: np.ndarray, u: np.ndarray) -> np.ndarray:
    a = t[:, 1:2] - t[:, 2:3] * u[None, :, 0]
    b = t[:, 3:4] - t[:, 4:5] * u[None, :, 1]
    return np.logaddexp(t[:, :1], np.logaddexp(a, b))


def _joint_jac(t: np.ndarray, u: np.ndarray, lp: np.ndarray) -> np.ndarray:
    d_e = np.exp(t[:, :1] - lp)
    d_a = np.exp(t[:, 1:2] - t[:, 2:3] * u[None, :, 0] - lp)
    d_b = np.exp(t[:, 3:4] - t[:, 4:5] * u[None, :, 1] - lp)
    return np.stack([d_e, d_a, -u[None, :, 0] * d_a, d_b, -u[None, :, 1] * d_b], axis=2)


def _joint_starts(u: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A grid as Hoffmann et al.'s (E, exponents, and the A/B split), projected."""
    out = []
    for frac in (0.0, 0.5, 0.9):
        big_e = frac * float(y.min())
        rest = math.log(max(float(np.median(y)) - big_e, 1e-6))
        for alpha in (0.1, 0.4, 1.0):
            for beta in (0.1, 0.4, 1.0):
                for share in (0.25, 0.75):
                    out.append(
                        (
                            math.log(max(big_e, 1e-8)),
                            rest + math.log(share),
                            alpha,
                            rest + math.log(1 - share),
                            beta,
                        )
                    )
    return np.array(out)


SATURATING = Form(
    FormName.SATURATING,
    "err = E + A x^-alpha",
    ("log_E", "log_A", "alpha"),
    1,
    (LOG_E_BOUNDS[0], LOG_A_BOUNDS[0], EXPONENT_BOUNDS[0]),
    (LOG_E_BOUNDS[1], LOG_A_BOUNDS[1], EXPONENT_BOUNDS[1]),
    _sat_pred,
    _sat_jac,
    _sat_starts,
    4,
)
PURE = Form(
    FormName.PURE,
    "err = A x^-alpha",
    ("log_A", "alpha"),
    1,
    (LOG_A_BOUNDS[0], EXPONENT_BOUNDS[0]),
    (LOG_A_BOUNDS[1], EXPONENT_BOUNDS[1]),
    _pure_pred,
    _pure_jac,
    _pure_starts,
    3,
)
BROKEN = Form(
    FormName.BROKEN,
    "err = A x^-alpha1 (1 + (x/x_b)^(1/s))^(-(alpha2-alpha1) s)",
    ("log_A", "alpha1", "alpha2", "log_xb"),
    1,
    (LOG_A_BOUNDS[0], EXPONENT_BOUNDS[0], EXPONENT_BOUNDS[0], -np.inf),
    (LOG_A_BOUNDS[1], EXPONENT_BOUNDS[1], EXPONENT_BOUNDS[1], np.inf),
    _broken_pred,
    _broken_jac,
    _broken_starts,
    6,  # 4 parameters and a break that must have sizes on both sides
)
JOINT = Form(
    FormName.JOINT,
    "err = E + A N^-alpha + B D^-beta",
    ("log_E", "log_A", "alpha", "log_B", "beta"),
    2,
    (LOG_E_BOUNDS[0], LOG_A_BOUNDS[0], EXPONENT_BOUNDS[0], LOG_A_BOUNDS[0], EXPONENT_BOUNDS[0]),
    (LOG_E_BOUNDS[1], LOG_A_BOUNDS[1], EXPONENT_BOUNDS[1], LOG_A_BOUNDS[1], EXPONENT_BOUNDS[1]),
    _joint_pred,
    _joint_jac,
    _joint_starts,
    6,
)
FORMS = {f.name: f for f in (SATURATING, PURE, BROKEN, JOINT)}
#: the one-variable forms the report chooses among, simplest last
ONE_D = (SATURATING, PURE, BROKEN)


def natural(form: Form, theta: np.ndarray, log_ref: np.ndarray) -> dict[str, np.ndarray]:
    """Parameters in the units of x for K rows: E, A (and B), exponents, the break."""
    t = np.atleast_2d(theta)
    out: dict[str, np.ndarray] = {}
    if form.name is FormName.SATURATING:
        out = {"E": np.exp(t[:, 0]), "log_A": t[:, 1] + t[:, 2] * log_ref[0], "alpha": t[:, 2]}
    elif form.name is FormName.PURE:
        out = {"E": np.zeros(len(t)), "log_A": t[:, 0] + t[:, 1] * log_ref[0], "alpha": t[:, 1]}
    elif form.name is FormName.BROKEN:
        out = {
            "E": np.zeros(len(t)),
            "log_A": t[:, 0] + t[:, 1] * log_ref[0],
            "alpha": t[:, 1],
            "alpha2": t[:, 2],
            "break": np.exp(t[:, 3] + log_ref[0]),
        }
    else:
        out = {
            "E": np.exp(t[:, 0]),
            "log_A": t[:, 1] + t[:, 2] * log_ref[0],
            "alpha": t[:, 2],
            "log_B": t[:, 3] + t[:, 4] * log_ref[1],
            "beta": t[:, 4],
        }
    out["A"] = np.exp(out["log_A"])
    if "log_B" in out:
        out["B"] = np.exp(out["log_B"])
    return out
