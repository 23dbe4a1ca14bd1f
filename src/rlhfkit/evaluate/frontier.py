"""The gold-against-KL frontier of every method (docs/design.md §10.3): the points, Gao et al.'s fitted
forms, the gold each method reaches within a KL budget, and what each point cost.

Gao et al. 2022 ("Scaling laws for reward model overoptimization") write the gold reward gained over
the initial policy as a function of d = √KL(π ‖ π_init):

    best-of-n:  R(d) = d (α − β d)
    RL:         R(d) = d (α − β log d)

Both are linear in (α, β), so the least-squares fit is a 2 × 2 linear solve; R(0) = 0 holds by form,
so a point at d = 0 (the SFT policy itself) carries no information and is not counted. Pure functions
of floats: the report and its tests call them on recorded numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FORMS = ("best_of_n", "rl")
MIN_FIT_POINTS = 3
"""Points with d > 0 a fit needs: two parameters from two points would fit any noise exactly."""
KL_BUDGETS = (1.0, 2.0, 4.0)
"""Nats: the budgets of the report's "gold reached at KL ≤ B" table."""


@dataclass
class FrontierPoint:
    """One evaluated policy on a method's curve: `step` is the training step (None for best-of-n's n,
    kept in `label`), `kl` the k1 KL to SFT, `gain` ± `stderr` the paired gold gain over SFT."""

    label: str
    kl: float
    gold: float
    gain: float
    stderr: float
    step: int | None = None
    final: bool = False

    @property
    def d(self) -> float:
        """√KL, with a k1 estimate a little below 0 (noise around a KL of 0) read as 0."""
        return math.sqrt(max(self.kl, 0.0))


def feature(d: float, form: str) -> float:
    """The term β multiplies (with a minus sign): d² for best-of-n, d log d for RL (0 at d = 0)."""
    if form == "best_of_n":
        return d * d
    if form == "rl":
        return d * math.log(d) if d > 0 else 0.0
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def gao_curve(d: float, alpha: float, beta: float, form: str) -> float:
    """R(d) = α d − β·feature(d): the gold gain over the initial policy at d = √KL."""
    return alpha * d - beta * feature(d, form)


def fit_gao(ds: list[float], gains: list[float], form: str) -> tuple[float, float] | None:
    """Least-squares (α, β) of R(d) = α d − β·feature(d) through the points (d_i, R_i); None when fewer
    than MIN_FIT_POINTS have d > 0 or the two columns are (numerically) collinear.

    Normal equations of the columns x = d, z = −feature(d):
        [Σx²  Σxz] [α]   [Σx R]
        [Σxz  Σz²] [β] = [Σz R]
    """
    if len(ds) != len(gains):
        raise ValueError(f"fit_gao needs as many gains as d values, got {len(ds)} and {len(gains)}")
    pairs = [(d, r) for d, r in zip(ds, gains) if d > 0]
    if len(pairs) < MIN_FIT_POINTS:
        return None
    x = [d for d, _ in pairs]
    z = [-feature(d, form) for d, _ in pairs]
    r = [g for _, g in pairs]
    sxx, sxz, szz = _dot(x, x), _dot(x, z), _dot(z, z)
    sxr, szr = _dot(x, r), _dot(z, r)
    det = sxx * szz - sxz * sxz
    if abs(det) <= 1e-12 * max(sxx * szz, 1e-300):
        return None
    return (szz * sxr - sxz * szr) / det, (sxx * szr - sxz * sxr) / det


def fit_gao_reference(ds: list[float], gains: list[float], form: str) -> tuple[float, float] | None:
    """The same fit by a plain grid-free route (the test oracle): eliminate α, whose optimum given β is
    Σx(R + β f) / Σx², and minimise the residual over β in closed form of the remaining 1-D least
    squares: regress (R − x Σx R/Σx²) on (x Σx f/Σx² − f)."""
    pairs = [(d, r) for d, r in zip(ds, gains) if d > 0]
    if len(pairs) < MIN_FIT_POINTS:
        return None
    x = [d for d, _ in pairs]
    f = [feature(d, form) for d, _ in pairs]
    r = [g for _, g in pairs]
    sxx = _dot(x, x)
    u = [ri - xi * _dot(x, r) / sxx for xi, ri in zip(x, r)]
    v = [xi * _dot(x, f) / sxx - fi for xi, fi in zip(x, f)]
    if _dot(v, v) == 0:
        return None
    beta = _dot(u, v) / _dot(v, v)
    alpha = sum(xi * (ri + beta * fi) for xi, ri, fi in zip(x, r, f)) / sxx
    return alpha, beta


def best_within(points: list[FrontierPoint], budget: float) -> FrontierPoint | None:
    """The measured point with the highest gold among those with KL ≤ `budget` nats (None if none is)."""
    inside = [p for p in points if p.kl <= budget]
    return max(inside, key=lambda p: p.gold) if inside else None


def fit_points(points: list[FrontierPoint], form: str) -> tuple[float, float] | None:
    return fit_gao([p.d for p in points], [p.gain for p in points], form)


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))
