"""The BG/NBD purchase model (Fader, Hardie & Lee 2005), owned here and fitted by maximum
likelihood: a source of model-based features (``bgnbd_p_alive``, ``bgnbd_expected_purchases_30d``,
computed by :mod:`data_layer.feature_pipeline` at every snapshot instant) and the classical
baseline of purchase propensity (:mod:`training.baselines`). It lives in the data layer because
the feature pipeline needs it and the data layer imports no model code; training imports it
from here.

The model, per customer, in days since the customer's first purchase:

* while alive, the customer buys as a Poisson process of rate ``lambda``;
  ``lambda ~ Gamma(shape=r, rate=alpha)`` across customers;
* after each purchase the customer drops out for good with probability ``p``;
  ``p ~ Beta(a, b)`` across customers.

Everything the model needs from a customer is the summary ``(x, t_x, T)`` as of a cutoff:
``x`` repeat purchase days (purchase days after the first), ``t_x`` days from the first to the
last purchase day, ``T`` days from the first purchase day to the cutoff. :func:`rfm_summary`
builds it from events strictly before the cutoff, so a fit at a cutoff sees nothing after it.

Pure functions of numpy arrays and pandas frames; numpy and scipy only (the ``lifetimes``
package is archived and not used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1
from threadpoolctl import threadpool_limits

DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class BGNBDParams:
    """The four population parameters; ``alpha`` is in days (the time unit of the summary)."""

    r: float
    alpha: float
    a: float
    b: float

    def as_array(self) -> np.ndarray:
        return np.array([self.r, self.alpha, self.a, self.b], dtype=np.float64)


@dataclass(frozen=True)
class BGNBDFit:
    """A maximum-likelihood fit: the parameters and how the optimiser got there."""

    params: BGNBDParams
    log_likelihood: float
    """Total log-likelihood of the fitted customers at ``params``."""
    n_customers: int
    converged: bool
    message: str


def _summary_arrays(frequency, recency, age) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The summary as float arrays, checked: 0 <= t_x <= T, x >= 0, and t_x = 0 when x = 0."""
    x = np.asarray(frequency, dtype=np.float64)
    t_x = np.asarray(recency, dtype=np.float64)
    big_t = np.asarray(age, dtype=np.float64)
    if not (x.shape == t_x.shape == big_t.shape):
        shapes = f"{x.shape}, {t_x.shape}, {big_t.shape}"
        raise ValueError(f"frequency, recency and T differ in shape: {shapes}")
    if not (np.isfinite(x).all() and np.isfinite(t_x).all() and np.isfinite(big_t).all()):
        raise ValueError("frequency, recency and T must be finite")
    if (x < 0).any() or (t_x < 0).any() or (t_x > big_t).any():
        raise ValueError("need frequency >= 0 and 0 <= recency <= T for every customer")
    if ((x == 0) & (t_x != 0)).any():
        raise ValueError("a customer without repeat purchases must have recency 0")
    return x, t_x, big_t


def log_likelihood(params: BGNBDParams, frequency, recency, age) -> np.ndarray:
    """Each customer's log-likelihood of ``(x, t_x, T)`` under ``params`` (equation 6 of the
    paper, in logs): ``L = B(a, b+x)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+T)^(r+x))
    + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x))``.
    """
    x, t_x, big_t = _summary_arrays(frequency, recency, age)
    return _log_likelihood(params.as_array(), x, t_x, big_t)


def _log_likelihood(theta: np.ndarray, x, t_x, big_t) -> np.ndarray:
    r, alpha, a, b = theta
    common = (
        gammaln(r + x)
        - gammaln(r)
        + r * np.log(alpha)
        + gammaln(a + b)
        + gammaln(b + x)
        - gammaln(b)
        - gammaln(a + b + x)
    )
    still_alive = -(r + x) * np.log(alpha + big_t)
    repeat = x > 0
    # B(a+1, b+x-1) / B(a, b+x) = a / (b+x-1): the customer dropped out right after t_x.
    dropped = np.full_like(x, -np.inf)
    dropped[repeat] = (
        np.log(a) - np.log(b + x[repeat] - 1) - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    )
    return common + np.logaddexp(still_alive, dropped)


def fit(
    frequency,
    recency,
    age,
    *,
    initial: BGNBDParams | None = None,
    max_iterations: int = 2000,
    counts=None,
) -> BGNBDFit:
    """Maximum-likelihood parameters for the customers' summaries.

    Customers with the same ``(x, t_x, T)`` are pooled (their log-likelihoods are equal), so a
    fit on day-level summaries costs about the number of distinct triples. ``counts`` (whole
    numbers) says how many customers share each given summary, so a caller holding only the
    distinct summaries (the feature build's population fit) gets exactly the fit of the
    expanded customers: the result depends only on the multiset of summaries, never on their
    order. The optimiser works on log-parameters (all four are positive) and on time rescaled
    to the median age, which keeps ``alpha`` of the same order as the others; ``alpha`` is
    scaled back to days.
    """
    x, t_x, big_t = _summary_arrays(frequency, recency, age)
    n = np.ones_like(x) if counts is None else np.asarray(counts, dtype=np.float64)
    if n.shape != x.shape or not (np.isfinite(n).all() and (n >= 0).all()):
        raise ValueError("counts must be one non-negative number per summary")
    if x.size == 0 or n.sum() == 0:
        raise ValueError("no customers to fit the BG/NBD model on")
    if not ((big_t > 0) & (n > 0)).any():
        raise ValueError("every customer has age T = 0: nothing was observed after a purchase")
    if not ((x > 0) & (n > 0)).any():
        # Without a repeat purchase the likelihood does not involve the dropout (a, b) at all
        # and grows without bound as r / alpha -> 0: there is no estimate, only a drift to
        # the optimiser's bounds.
        raise ValueError("no customer has a repeat purchase: the parameters are not identified")
    triples, inverse = np.unique(np.column_stack([x, t_x, big_t]), axis=0, return_inverse=True)
    pooled = np.bincount(inverse.ravel(), weights=n, minlength=len(triples))
    scale = _weighted_median(triples[:, 2], pooled, triples[:, 2] > 0)
    ux, ut_x, ubig_t = triples[:, 0], triples[:, 1] / scale, triples[:, 2] / scale
    weights = pooled / pooled.sum()

    def objective(log_theta: np.ndarray) -> float:
        value = -(weights * _log_likelihood(np.exp(log_theta), ux, ut_x, ubig_t)).sum()
        return float(value) if np.isfinite(value) else 1e12

    start = (
        np.array([1.0, 1.0, 1.0, 1.0])
        if initial is None
        else initial.as_array() / np.array([1.0, scale, 1.0, 1.0])
    )
    # Four parameters: multithreaded BLAS inside the optimiser only costs thread hand-offs
    # (measured 3x slower on 2 busy cores), and a build runs one fit per snapshot instant.
    with threadpool_limits(limits=1, user_api="blas"):
        result = minimize(
            objective,
            np.log(start),
            method="L-BFGS-B",
            bounds=[(-12.0, 12.0)] * 4,
            options={"maxiter": max_iterations},
        )
        if not result.success:
            # L-BFGS-B sometimes stops on a flat ridge ("ABNORMAL" line search): Nelder-Mead from
            # there needs no gradient and finishes the climb.
            result = minimize(
                objective,
                result.x,
                method="Nelder-Mead",
                options={"maxiter": max_iterations, "xatol": 1e-7, "fatol": 1e-10},
            )
    r, alpha, a, b = np.exp(result.x)
    params = BGNBDParams(r=float(r), alpha=float(alpha * scale), a=float(a), b=float(b))
    total = float((log_likelihood(params, x, t_x, big_t) * n).sum())
    return BGNBDFit(
        params=params,
        log_likelihood=total,
        n_customers=int(n.sum()),
        converged=bool(result.success),
        message=str(result.message),
    )


def _weighted_median(values: np.ndarray, counts: np.ndarray, keep: np.ndarray) -> float:
    """``np.median`` of ``values[keep]``, each repeated ``counts`` times, without expanding
    them: the middle element, or the mean of the two middle ones."""
    keep = keep & (counts > 0)
    order = np.argsort(values[keep], kind="stable")
    values, counts = values[keep][order], counts[keep][order]
    ends = np.cumsum(counts)
    total = int(ends[-1])
    low = values[np.searchsorted(ends, (total - 1) // 2, side="right")]
    high = values[np.searchsorted(ends, total // 2, side="right")]
    return float((low + high) / 2)


def probability_alive(params: BGNBDParams, frequency, recency, age) -> np.ndarray:
    """P(the customer has not dropped out by T | x, t_x, T): 1 for a customer without repeats
    (in BG/NBD a customer can drop out only right after a repeat purchase)."""
    x, t_x, big_t = _summary_arrays(frequency, recency, age)
    r, alpha, a, b = params.as_array()
    odds = np.zeros_like(x)
    repeat = x > 0
    xr = x[repeat]
    odds[repeat] = np.exp(
        np.log(a)
        - np.log(b + xr - 1)
        + (r + xr) * (np.log(alpha + big_t[repeat]) - np.log(alpha + t_x[repeat]))
    )
    return 1.0 / (1.0 + odds)


def expected_purchases(params: BGNBDParams, horizon: float, frequency, recency, age) -> np.ndarray:
    """Expected number of purchase days in ``(T, T + horizon]`` given ``(x, t_x, T)``
    (equation 10 of the paper). ``horizon`` is in days.

    The closed form divides by ``a - 1``; it is the analytic continuation for ``a < 1`` and is
    finite there, but not at ``a == 1`` exactly, which raises.
    """
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0 days, got {horizon}")
    x, t_x, big_t = _summary_arrays(frequency, recency, age)
    r, alpha, a, b = params.as_array()
    if abs(a - 1.0) < 1e-9:
        raise ValueError("the BG/NBD conditional expectation is undefined at a == 1")
    if horizon == 0:
        return np.zeros_like(x)
    z = horizon / (alpha + big_t + horizon)
    ratio = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + horizon)))
    numerator = (a + b + x - 1) / (a - 1) * (1 - ratio * hyp2f1(r + x, b + x, a + b + x - 1, z))
    return numerator * probability_alive(params, x, t_x, big_t)


def probability_of_purchase(
    params: BGNBDParams, horizon: float, frequency, recency, age
) -> np.ndarray:
    """P(at least one purchase in ``(T, T + horizon]`` | x, t_x, T): the propensity score of a
    "buys within the horizon" label. A customer still alive at T has a rate whose posterior is
    Gamma(r + x, alpha + T) and cannot drop out before buying again, so
    ``P = P(alive) * (1 - ((alpha + T) / (alpha + T + horizon)) ** (r + x))``.
    """
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0 days, got {horizon}")
    x, t_x, big_t = _summary_arrays(frequency, recency, age)
    r, alpha, _, _ = params.as_array()
    log_none_while_alive = (r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + horizon))
    return probability_alive(params, x, t_x, big_t) * -np.expm1(log_none_while_alive)


def scores_at_cutoff(
    events: pd.DataFrame,
    cutoff: pd.Timestamp,
    horizons: tuple[int, ...] = (14, 28, 90),
    *,
    purchase_type: str = "purchase",
) -> tuple[pd.DataFrame, BGNBDFit]:
    """BG/NBD fitted on the purchases strictly before ``cutoff``, and its scores as of then.

    Returns one row per customer with a purchase before the cutoff (the :func:`rfm_summary`
    columns, then ``bgnbd_p_alive`` and, per horizon h, ``bgnbd_expected_{h}d`` and
    ``bgnbd_p_purchase_{h}d``) and the fit. Nothing at or after the cutoff is read, so the
    scores can stand beside point-in-time features at the same instant.
    """
    summary = rfm_summary(events, cutoff, purchase_type=purchase_type)
    if summary.empty:
        raise ValueError(f"no purchase before {cutoff}: nothing to fit the BG/NBD model on")
    x, t_x, big_t = (summary[c].to_numpy() for c in ("frequency", "recency", "T"))
    fitted = fit(x, t_x, big_t)
    scores = summary.copy()
    scores["bgnbd_p_alive"] = probability_alive(fitted.params, x, t_x, big_t)
    for h in horizons:
        scores[f"bgnbd_expected_{h}d"] = expected_purchases(fitted.params, h, x, t_x, big_t)
        scores[f"bgnbd_p_purchase_{h}d"] = probability_of_purchase(fitted.params, h, x, t_x, big_t)
    return scores, fitted


def rfm_summary(
    events: pd.DataFrame, cutoff: pd.Timestamp, *, purchase_type: str = "purchase"
) -> pd.DataFrame:
    """Per-customer BG/NBD summary and monetary value as of ``cutoff``, from purchases strictly
    before it (nothing at or after the cutoff is read, so the summary cannot leak).

    ``events`` needs ``customer_id``, ``event_timestamp``, ``event_type`` and ``amount``.
    Purchases are counted by UTC day, as the model's periods: several purchases on one day are
    one purchase day. Returns one row per customer with a purchase before the cutoff, indexed
    by ``customer_id``: ``frequency`` (repeat purchase days), ``recency`` and ``T`` (days from
    the first purchase day to the last one and to the cutoff), ``monetary_value`` (mean amount
    of the purchases; NaN when the log has no amounts) and ``purchases`` (purchase lines).
    """
    cutoff = pd.Timestamp(cutoff)
    cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    stamps = pd.to_datetime(events["event_timestamp"], utc=True)
    before = (events["event_type"] == purchase_type).to_numpy() & (stamps < cutoff).to_numpy()
    amount = (
        pd.to_numeric(events["amount"], errors="coerce")
        if "amount" in events
        else pd.Series(np.nan, index=events.index)
    )
    purchases = pd.DataFrame(
        {
            "customer_id": events["customer_id"].to_numpy()[before],
            "day": stamps[before].dt.floor("D").dt.tz_localize(None).to_numpy(),
            "amount": amount.to_numpy(dtype=np.float64)[before],
        }
    )
    columns = ["frequency", "recency", "T", "monetary_value", "purchases"]
    if purchases.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="customer_id"), dtype=float)
    grouped = purchases.groupby("customer_id", sort=True, observed=True)
    first, last = grouped["day"].min(), grouped["day"].max()
    # T counts whole days from the first purchase day to the cutoff's day.
    cutoff_day = cutoff.floor("D").tz_localize(None)
    summary = pd.DataFrame(
        {
            "frequency": grouped["day"].nunique().astype(np.float64) - 1,
            "recency": (last - first) / DAY,
            "T": (cutoff_day - first) / DAY,
            "monetary_value": grouped["amount"].mean(),
            "purchases": grouped.size().astype(np.float64),
        }
    )
    summary.index.name = "customer_id"
    return summary[columns]
