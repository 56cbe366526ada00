"""A batched Levenberg-Marquardt solver for Huber fits of any law form in log space.

The standard we follow is public scaling-law code: Hoffmann et al. 2022 (Chinchilla,
Approach 3) and Epoch AI's replication fit log(err) with a Huber loss from a grid of
initial values, keeping the best optimum. Here:

- Many problems are solved at once (K rows: data sets, starts, bootstrap replicates),
  on one design (the distinct points x the runs sit at): the model and its Jacobian are
  evaluated once per distinct point, and each problem has its own log errors, weights
  and Huber threshold. That is what makes thousands of refits cost well under a second.
- Each step is a damped Gauss-Newton step on the Huber IRLS model (reweighted least
  squares), clipped to the form's bounds. tests/test_fit.py checks the optimum against
  scipy.optimize.least_squares(loss="huber").
- The Huber threshold: Chinchilla's delta = 1e-3 suits language-model losses predicted
  to about 1e-3. Errors of image classifiers scatter by a few percent over seeds, which
  that delta turns into least absolute deviations. The default is Huber's own rule,
  delta = 1.345 sigma, sigma the MAD scale of a least-squares fit's residuals (at least
  DELTA); pass delta=1e-3 for the Chinchilla setting.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scaling.report.forms import Form

#: Huber threshold on log residuals of Hoffmann et al. 2022 and Epoch AI's replication;
#: the floor of the automatic threshold.
DELTA = 1e-3
#: Huber's tuning constant: 95% efficiency under Gaussian noise.
HUBER_K = 1.345
#: problems x runs solved per chunk (memory: ~40 bytes x this per array).
CHUNK = 1_000_000


def huber(r: np.ndarray, delta: float | np.ndarray) -> np.ndarray:
    """0.5 r^2 inside delta, delta (|r| - delta / 2) outside (as m (|r| - m / 2), m the
    smaller of |r| and delta: one expression for both sides)."""
    a = np.abs(r)
    m = np.minimum(a, delta)
    return m * (a - 0.5 * m)


class Design(NamedTuple):
    """Runs grouped by design point: the u of each distinct point (m, dims), each run's
    index into it and the first run of each point's block (runs of a point are
    contiguous, so sums over a point are one np.add.reduceat)."""

    u: np.ndarray
    idx: np.ndarray
    starts: np.ndarray

    @property
    def n_runs(self) -> int:
        return len(self.idx)


def design(u: np.ndarray) -> tuple[Design, np.ndarray]:
    """The design of runs at u (n, dims), and the order that groups them (apply it to
    their errors)."""
    u = np.asarray(u, float).reshape(len(u), -1)
    points, inverse = np.unique(u, axis=0, return_inverse=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    idx = inverse.ravel()[order]
    starts = np.flatnonzero(np.r_[True, np.diff(idx) != 0])
    return Design(points, idx, starts), order


def _residuals(form: Form, theta: np.ndarray, d: Design, logy: np.ndarray) -> np.ndarray:
    return form.log_pred(theta, d.u)[:, d.idx] - logy


def _loss(r: np.ndarray, w: np.ndarray | None, delta: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        h = huber(r, delta[:, None])
        out = (h if w is None else w * h).sum(axis=1)
    return np.where(np.isfinite(out), out, np.inf)


def loss(
    form: Form,
    theta: np.ndarray,
    d: Design,
    logy: np.ndarray,
    w: np.ndarray | None,
    delta: np.ndarray,
) -> np.ndarray:
    with np.errstate(all="ignore"):
        return _loss(_residuals(form, theta, d, logy), w, delta)


def _lm_step(
    form: Form,
    theta: np.ndarray,
    d: Design,
    r: np.ndarray,
    w: np.ndarray | None,
    delta: np.ndarray,
    lam: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """One damped Gauss-Newton step on the IRLS (reweighted least squares) model, from
    the residuals r (K, n) at theta."""
    lp = form.log_pred(theta, d.u)
    omega = np.minimum(1.0, delta[:, None] / np.maximum(np.abs(r), 1e-300))
    if w is not None:
        omega = w * omega
    omega_x = np.add.reduceat(omega, d.starts, axis=1)  # (K, m)
    resid_x = np.add.reduceat(omega * r, d.starts, axis=1)
    jac = form.jacobian(theta, d.u, lp)  # (K, m, p)
    jac_t = jac.transpose(0, 2, 1)
    hess = np.matmul(jac_t * omega_x[:, None, :], jac)
    grad = np.matmul(jac_t, resid_x[:, :, None])[..., 0]
    diag = np.diagonal(hess, axis1=1, axis2=2)
    damp = lam[:, None] * (diag + 1e-9 * diag.sum(axis=1, keepdims=True) + 1e-300)
    hess = hess + damp[:, :, None] * np.eye(form.n_params)
    try:
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a degenerate problem in the batch: least squares
        step = np.matmul(np.linalg.pinv(hess), grad[..., None])[..., 0]
    return np.clip(theta - step, *bounds)


def solve(
    form: Form,
    theta0: np.ndarray,
    d: Design,
    logy: np.ndarray,
    delta: np.ndarray,
    w: np.ndarray | None = None,
    iters: int = 300,
    tol: float = 1e-9,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the weighted Huber loss for K problems at once, in chunks that bound
    memory; logy (K, n) or (n,), delta (K,), w (K, n) or None (ones). Returns
    (theta, loss). A problem stops when a step moves no parameter by 1e-7 or gains
    less than `tol` of its loss."""
    k = len(theta0)
    logy = np.broadcast_to(logy, (k, d.n_runs))
    w = None if w is None else np.broadcast_to(w, (k, d.n_runs))
    delta = np.broadcast_to(np.asarray(delta, float), (k,))
    size = max(1, CHUNK // max(1, d.n_runs))
    parts = []
    for i in range(0, k, size):
        c = slice(i, i + size)
        wc = None if w is None else w[c]
        parts.append(_solve(form, theta0[c], d, logy[c], wc, delta[c], iters, tol))
    if not parts:
        return np.empty((0, form.n_params)), np.empty(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _solve(
    form: Form,
    theta0: np.ndarray,
    d: Design,
    logy: np.ndarray,
    w: np.ndarray | None,
    delta: np.ndarray,
    iters: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    bounds = form.bounds(d.u)
    out = np.clip(theta0.astype(float), *bounds)
    out_loss = np.empty(len(out))
    # The working set: problems still moving. Indexing a (K, n) array every step would
    # copy it every step, so finished rows idle until a quarter of the set has finished,
    # and then the set is compacted.
    rows = np.arange(len(out))
    theta, y, dl = out.copy(), np.array(logy), delta.copy()
    wk = None if w is None else np.array(w)
    with np.errstate(all="ignore"):
        r = _residuals(form, theta, d, y)  # kept: a step starts from the last residuals
    best = _loss(r, wk, dl)
    lam = np.full(len(theta), 1e-2)
    finished = np.zeros(len(theta), bool)
    for _ in range(iters):
        if finished.all():
            break
        with np.errstate(all="ignore"):
            cand = _lm_step(form, theta, d, r, wk, dl, lam, bounds)
            r_cand = _residuals(form, cand, d, y)
        new = _loss(r_cand, wk, dl)
        ok = (new <= best) & ~finished
        moved = np.abs(cand - theta).max(axis=1)
        gain = best - new
        theta[ok], best[ok], r[ok] = cand[ok], new[ok], r_cand[ok]
        lam = np.where(ok, lam / 3, lam * 4)
        done = ~finished & ((ok & ((moved < 1e-7) | (gain <= tol * best))) | (lam > 1e8))
        out[rows[done]], out_loss[rows[done]] = theta[done], best[done]
        finished |= done
        if finished.sum() >= 0.25 * len(rows):
            keep = ~finished
            rows, theta, best, lam = rows[keep], theta[keep], best[keep], lam[keep]
            r, y, dl, finished = r[keep], y[keep], dl[keep], finished[keep]
            wk = None if wk is None else wk[keep]
    left = ~finished  # those that ran out of iterations
    out[rows[left]], out_loss[rows[left]] = theta[left], best[left]
    return out, out_loss


def fit_starts(
    form: Form, d: Design, logy: np.ndarray, delta: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best optimum from the form's grid of starts for each of R data sets (logy (R, n)),
    the Huber threshold each used, and each one's second-best distinct optimum (a warm
    start for refits; the best itself when there is none). With delta None the
    threshold follows Huber's rule on a least-squares fit's residuals."""
    r_sets = len(logy)
    u_runs = d.u[d.idx]
    starts = np.stack([form.starts(u_runs, np.exp(row)) for row in logy])  # (R, S, p)
    s = starts.shape[1]
    flat = starts.reshape(-1, form.n_params)
    rows = np.repeat(logy, s, axis=0)
    if delta is None:
        ls, ls_loss = solve(form, flat, d, rows, np.full(len(flat), 1e6))
        pick = ls_loss.reshape(r_sets, s).argmin(axis=1)
        best_ls = ls.reshape(r_sets, s, -1)[np.arange(r_sets), pick]
        res = _residuals(form, best_ls, d, logy)
        mad = np.median(np.abs(res - np.median(res, axis=1, keepdims=True)), axis=1)
        delta = np.maximum(HUBER_K * 1.4826 * mad, DELTA)
        starts = np.concatenate([best_ls[:, None, :], starts], axis=1)
        s += 1
        flat = starts.reshape(-1, form.n_params)
        rows = np.repeat(logy, s, axis=0)
    delta = np.broadcast_to(np.asarray(delta, float), (r_sets,))
    optima, losses = solve(form, flat, d, rows, np.repeat(delta, s))
    optima, losses = optima.reshape(r_sets, s, -1), losses.reshape(r_sets, s)
    rank = np.argsort(losses, axis=1)
    best = optima[np.arange(r_sets), rank[:, 0]]
    second = best.copy()
    for i in range(r_sets):
        other = [j for j in rank[i, 1:] if np.abs(optima[i, j] - best[i]).max() > 1e-3]
        if other:
            second[i] = optima[i, other[0]]
    return best, np.asarray(delta, float).copy(), second
