"""Fitting the hardware model's linear latency forms to measurements, with held-out error.

Every latency function in `hwmodel.latency` is linear in a few work features with
non-negative coefficients (a fixed cost per item, a cost per token, per sequence, per
vector...). `fit_linear` fits such a form by non-negative least squares on *relative*
error (each row weighted by 1/y, so a 1 ms step counts as much as a 50 ms one), made robust
by Huber weights (`robust_lstsq`: a row far off the fit, such as the steps of a few seconds
when another tenant of the machine took its cores, counts linearly, not squared), and
`heldout_error` says how well the form predicts measurements it was not fitted on: the
rows are split into folds by the grid cell they came from, each fold is predicted by a fit
of the others, and the median and 90th percentile of |predicted - measured| / measured are
reported. The coefficients shipped in a profile are the fit on all rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FOLDS = 4


@dataclass(frozen=True)
class LinearFit:
    """A fitted linear form: seconds = sum(coef[name] * feature[name])."""

    names: tuple[str, ...]  # feature names, in column order
    coef: tuple[float, ...]  # non-negative coefficients
    train_median_error: float  # median |rel error| of the fit on its own rows
    heldout_median_error: float  # median |rel error| on held-out grid cells
    heldout_p90_error: float  # 90th percentile of |rel error| on held-out grid cells
    rows: int  # measurements fitted

    def as_dict(self) -> dict[str, object]:
        return {"coefficients": dict(zip(self.names, self.coef, strict=True)), "rows": self.rows,
                "train_median_abs_rel_error": self.train_median_error,
                "heldout_median_abs_rel_error": self.heldout_median_error,
                "heldout_p90_abs_rel_error": self.heldout_p90_error}

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=float) @ np.asarray(self.coef)


def nonnegative_lstsq(a: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least squares with every coefficient >= 0 (active set: drop the most negative, refit)."""
    a = np.asarray(a, dtype=float)
    y = np.asarray(y, dtype=float)
    assert a.ndim == 2 and y.shape == (a.shape[0],), (a.shape, y.shape)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    aw, yw = a * w[:, None], y * w
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(aw[:, active], yw, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef


HUBER_K = 1.345  # Huber's tuning constant, in robust standard deviations (95% efficiency on clean data)
ROBUST_ITERATIONS = 20


def robust_lstsq(a: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`nonnegative_lstsq` with Huber's loss on the weighted residuals, by iteratively reweighted
    least squares: residuals beyond `HUBER_K` robust standard deviations (1.4826 x their median
    absolute deviation) get weight k / |r|. A run of slow steps (the machine busy elsewhere for a
    few seconds of the calibration) then shifts the fit far less than under squared loss."""
    coef = nonnegative_lstsq(a, y, weights)
    for _ in range(ROBUST_ITERATIONS):
        r = (a @ coef - y) * weights
        scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        if scale <= 0.0:
            break
        k = HUBER_K * scale
        huber = k / np.maximum(np.abs(r), k)  # 1.0 within k, k / |r| beyond
        new = nonnegative_lstsq(a, y, weights * np.sqrt(huber))
        if np.allclose(new, coef, rtol=1e-6, atol=0.0):
            return new
        coef = new
    return coef


def _rel_errors(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(pred - y) / y


def fit_linear(names: Sequence[str], x: np.ndarray, y: np.ndarray, cells: Sequence[object]) -> LinearFit:
    """Fit `y ~ x @ coef` (coef >= 0, relative error, Huber's loss); `cells[i]` names the grid cell
    row i was measured in, and whole cells are held out together."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    assert x.shape == (len(y), len(names)) and len(cells) == len(y), (x.shape, len(y), len(names), len(cells))
    if (y <= 0).any():
        raise ValueError("measured durations must be positive")
    weights = 1.0 / y
    coef = robust_lstsq(x, y, weights)
    train = _rel_errors(x @ coef, y)
    unique = sorted({str(c) for c in cells})
    fold_of = {c: i % FOLDS for i, c in enumerate(unique)}
    folds = np.array([fold_of[str(c)] for c in cells])
    held: list[np.ndarray] = []
    for f in range(min(FOLDS, len(unique))):
        test = folds == f
        if test.all() or not test.any():
            continue
        c = robust_lstsq(x[~test], y[~test], weights[~test])
        held.append(_rel_errors(x[test] @ c, y[test]))
    errs = np.concatenate(held) if held else train
    return LinearFit(tuple(names), tuple(float(v) for v in coef), float(np.median(train)),
                     float(np.median(errs)), float(np.percentile(errs, 90)), len(y))
