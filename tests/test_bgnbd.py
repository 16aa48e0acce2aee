"""The BG/NBD model: likelihood by hand, parameter recovery on its own generative process,
the formulas' known properties, a summary that reads nothing at or after its cutoff, and the
feature pipeline's BG/NBD features equal to the baseline's scores at the same instant."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from data_layer.bgnbd import (
    BGNBDParams,
    expected_purchases,
    fit,
    log_likelihood,
    probability_alive,
    probability_of_purchase,
    rfm_summary,
    scores_at_cutoff,
)
from data_layer.feature_pipeline import bgnbd_population, compute_snapshots
from data_layer.schema import to_canonical_table

CDNOW = BGNBDParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)
"""The paper's CDNOW estimates, with alpha converted from weeks to days."""


def simulate_bgnbd(
    params: BGNBDParams, n: int, seed: int, horizon: float
) -> tuple[np.ndarray, ...]:
    """Customers drawn from the BG/NBD generative process, in continuous days.

    Each customer's first purchase is at 0 and the observation ends at an age T drawn between
    180 and 720 days; purchases go on to T + ``horizon`` so the future is known. Returns
    (x, t_x, T, repeat purchases in (T, T + horizon], alive at T).
    """
    rng = np.random.default_rng(seed)
    rate = rng.gamma(params.r, 1 / params.alpha, size=n)
    dropout = rng.beta(params.a, params.b, size=n)
    age = rng.uniform(180, 720, size=n)
    clock = np.zeros(n)
    x, t_x, future = np.zeros(n), np.zeros(n), np.zeros(n)
    buying = np.ones(n, dtype=bool)
    alive_at_age = np.ones(n, dtype=bool)
    while buying.any():
        idx = np.flatnonzero(buying)
        clock[idx] += rng.exponential(1 / rate[idx])
        ended = clock[idx] > age[idx] + horizon
        buying[idx[ended]] = False
        idx = idx[~ended]
        observed = clock[idx] <= age[idx]
        x[idx[observed]] += 1
        t_x[idx[observed]] = clock[idx[observed]]
        future[idx[~observed]] += 1
        # A customer may drop out right after each repeat purchase, never after the first.
        drops = rng.random(idx.size) < dropout[idx]
        buying[idx[drops]] = False
        alive_at_age[idx[drops & observed]] = False
    return x, t_x, age, future, alive_at_age


@pytest.fixture(scope="module")
def simulated() -> tuple[np.ndarray, ...]:
    return simulate_bgnbd(CDNOW, 5000, seed=20260, horizon=90.0)


# --- likelihood ------------------------------------------------------------------------------


def test_log_likelihood_matches_hand_computation() -> None:
    """r=0.5, alpha=2, a=1.5, b=3.

    x=0, T=10: L = (alpha / (alpha + T))^r = (2/12)^0.5 = 0.40824829.
    x=2, t_x=4, T=10: G(r+x)/G(r) = 0.75, alpha^r = 1.41421356,
      B(a, b+x)/B(a, b) = (3/4.5)(4/5.5) = 0.48484848, (alpha+T)^-(r+x) = 12^-2.5 = 0.00200469,
      B(a+1, b+x-1)/B(a, b) = 1.5 * 3 / (5.5 * 4.5) = 0.18181818, (alpha+t_x)^-2.5 = 0.01134023,
      L = 0.75 * 1.41421356 * (0.48484848 * 0.00200469 + 0.18181818 * 0.01134023) = 0.00321786.
    """
    params = BGNBDParams(r=0.5, alpha=2.0, a=1.5, b=3.0)
    values = log_likelihood(params, [0, 2], [0, 4], [10, 10])
    np.testing.assert_allclose(values, np.log([0.40824829, 0.00321786]), rtol=2e-6)


def test_summaries_that_cannot_happen_are_refused() -> None:
    params = BGNBDParams(1, 1, 1, 1)
    with pytest.raises(ValueError, match="recency <= T"):
        log_likelihood(params, [1], [5], [4])
    with pytest.raises(ValueError, match="recency 0"):
        log_likelihood(params, [0], [2], [4])
    with pytest.raises(ValueError, match="shape"):
        probability_alive(params, [1, 2], [1], [4])
    with pytest.raises(ValueError, match="no customers"):
        fit([], [], [])


# --- fitting ---------------------------------------------------------------------------------


def test_fit_recovers_the_parameters_it_was_simulated_from(simulated) -> None:
    x, t_x, age, _, _ = simulated
    result = fit(x, t_x, age)
    assert result.converged, result.message
    assert result.n_customers == 5000
    got, want = result.params.as_array(), CDNOW.as_array()
    # Over 30 seeds of this size the largest errors were r 6%, alpha 11%, the mean dropout
    # probability a / (a + b) 12%, and a and b alone 25% and 33%: they trade off along a ridge
    # of the likelihood that keeps a / (a + b) in place.
    assert result.params.r == pytest.approx(CDNOW.r, rel=0.10)
    assert result.params.alpha == pytest.approx(CDNOW.alpha, rel=0.15)
    mean_dropout = result.params.a / (result.params.a + result.params.b)
    assert mean_dropout == pytest.approx(CDNOW.a / (CDNOW.a + CDNOW.b), rel=0.15)
    np.testing.assert_allclose(got[2:], want[2:], rtol=0.40)
    # Likelihood-ratio check: the true parameters are inside the 99.9% confidence region.
    true_ll = float(log_likelihood(CDNOW, x, t_x, age).sum())
    assert result.log_likelihood >= true_ll
    assert 2 * (result.log_likelihood - true_ll) < chi2.ppf(0.999, df=4)


def test_a_fit_on_counted_summaries_is_the_fit_on_the_customers(simulated) -> None:
    """The feature build fits on (distinct summary, how many customers) rows: the same fit,
    to the last bit, as on one row per customer, whatever the order."""
    x, t_x, age, _, _ = (v[:1500] for v in simulated)
    x, t_x, age = x, np.round(t_x), np.round(age)  # day-level summaries share triples
    triples, counts = np.unique(np.column_stack([x, t_x, age]), axis=0, return_counts=True)
    order = np.random.default_rng(1).permutation(len(triples))
    pooled = fit(*triples[order].T, counts=counts[order])
    each = fit(x, t_x, age)
    assert pooled.params == each.params and pooled.n_customers == each.n_customers == 1500
    assert pooled.log_likelihood == pytest.approx(each.log_likelihood, rel=1e-12)
    with pytest.raises(ValueError, match="not identified"):
        fit([0, 0], [0, 0], [5, 9])  # nobody bought twice: nothing to learn dropout from


def test_fit_does_not_depend_on_the_starting_point(simulated) -> None:
    x, t_x, age, _, _ = simulated
    default = fit(x, t_x, age).params.as_array()
    elsewhere = fit(x, t_x, age, initial=BGNBDParams(3.0, 200.0, 5.0, 10.0)).params.as_array()
    np.testing.assert_allclose(elsewhere, default, rtol=1e-3)


# --- predictions -----------------------------------------------------------------------------


def test_predictions_match_what_the_simulated_customers_then_did(simulated) -> None:
    x, t_x, age, future, alive = simulated
    expected = expected_purchases(CDNOW, 90.0, x, t_x, age)
    standard_error = future.std() / np.sqrt(future.size)
    assert abs(expected.mean() - future.mean()) < 3 * standard_error
    # Also among the heavy buyers, where recency matters most.
    heavy = x >= 5
    assert heavy.sum() > 100
    assert abs(expected[heavy].mean() - future[heavy].mean()) < 3 * (
        future[heavy].std() / np.sqrt(heavy.sum())
    )
    p_alive = probability_alive(CDNOW, x, t_x, age)
    # The propensity score: who buys at least once in the horizon (only the living can).
    p_buy = probability_of_purchase(CDNOW, 90.0, x, t_x, age)
    bought = future > 0
    assert abs(p_buy.mean() - bought.mean()) < 3 * np.sqrt((p_buy * (1 - p_buy)).mean() / x.size)
    assert (p_buy <= p_alive).all()
    spread = np.sqrt((p_alive * (1 - p_alive)).mean() / x.size)
    assert abs(p_alive.mean() - alive.mean()) < 3 * spread


def test_known_properties_of_the_formulas() -> None:
    params = BGNBDParams(r=0.4, alpha=30.0, a=0.8, b=2.5)
    # No repeat purchase: the customer cannot have dropped out yet.
    np.testing.assert_array_equal(probability_alive(params, [0, 0], [0, 0], [5, 400]), [1, 1])
    # A long silence since the last repeat purchase lowers P(alive).
    p = probability_alive(params, [3, 3, 3], [50, 50, 50], [60, 200, 600])
    assert (np.diff(p) < 0).all() and (p > 0).all() and (p < 1).all()
    # At fixed recency and age, more repeat purchases mean more purchases expected.
    frequency = np.arange(0, 12)
    recency = np.where(frequency > 0, 300.0, 0.0)
    e = expected_purchases(params, 90.0, frequency, recency, np.full(12, 320.0))
    assert (np.diff(e[1:]) > 0).all() and e[1] > 0
    # Longer horizons, more purchases; none in no time.
    horizons = [expected_purchases(params, h, [4], [100], [150])[0] for h in (0, 14, 28, 90)]
    assert horizons[0] == 0 and np.all(np.diff(horizons) > 0)
    # With x = 0 and age T the posterior is lambda ~ Gamma(r, alpha + T), p ~ Beta(a, b), alive;
    # then E[Y(t) | lambda, p] = (1 - exp(-lambda p t)) / p (equation 7 of the paper). The closed
    # form (with its hypergeometric function) must equal that mixture, integrated by sampling.
    rng = np.random.default_rng(5)
    rate_post = rng.gamma(params.r, 1 / (params.alpha + 100.0), size=400_000)
    drop_post = rng.beta(params.a, params.b, size=rate_post.size)
    # E[Y(t) | lambda, p, alive] = (1 - exp(-lambda p t)) / p for BG/NBD.
    mc = ((1 - np.exp(-rate_post * drop_post * 90.0)) / drop_post).mean()
    closed = expected_purchases(params, 90.0, [0], [0], [100.0])[0]
    assert closed == pytest.approx(mc, rel=0.02)


def test_a_equal_to_one_is_refused_rather_than_divided_by_zero() -> None:
    with pytest.raises(ValueError, match="a == 1"):
        expected_purchases(BGNBDParams(1, 10, 1.0, 2), 30, [1], [5], [10])


# --- point-in-time summary -------------------------------------------------------------------


def _purchase(customer: str, when: str, amount: float | None, kind: str = "purchase") -> dict:
    return {
        "customer_id": customer,
        "event_timestamp": pd.Timestamp(when, tz="UTC"),
        "event_type": kind,
        "amount": amount,
    }


EVENTS = pd.DataFrame(
    [
        _purchase("A", "2026-01-01 09:00", 10.0),
        _purchase("A", "2026-01-01 17:00", 0.0),  # a second order the same day: one purchase day
        _purchase("A", "2026-01-11 12:00", 20.0),
        _purchase("A", "2026-01-31 08:00", 30.0),
        _purchase("A", "2026-01-20 10:00", 99.0, kind="return"),  # not a purchase
        _purchase("B", "2026-02-10 23:59", 5.0),
        _purchase("C", "2026-01-05 10:00", 7.0, kind="page_view"),  # never bought
    ]
)
CUTOFF = pd.Timestamp("2026-03-01", tz="UTC")


def test_summary_by_hand() -> None:
    summary = rfm_summary(EVENTS, CUTOFF)
    assert list(summary.index) == ["A", "B"]
    a, b = summary.loc["A"], summary.loc["B"]
    # A bought on Jan 1 (twice), Jan 11 and Jan 31: 2 repeat days, last 30 days after the first;
    # Jan 1 to Mar 1 is 59 days.
    assert (a["frequency"], a["recency"], a["T"], a["purchases"]) == (2, 30, 59, 4)
    assert a["monetary_value"] == pytest.approx(15.0)  # (10 + 0 + 20 + 30) / 4, $0 counts
    assert (b["frequency"], b["recency"], b["T"], b["monetary_value"]) == (0, 0, 19, 5.0)


def test_summary_ignores_everything_at_or_after_the_cutoff() -> None:
    before = rfm_summary(EVENTS, CUTOFF)
    later = pd.DataFrame(
        [
            _purchase("A", "2026-03-01 00:00", 500.0),  # exactly at the cutoff: not before it
            _purchase("A", "2026-03-15 10:00", 40.0),
            _purchase("B", "2026-04-01 10:00", 40.0),
            _purchase("D", "2026-03-02 10:00", 40.0),  # a customer who appears only later
        ]
    )
    with_future = pd.concat([EVENTS, later], ignore_index=True).sample(frac=1, random_state=3)
    after = rfm_summary(with_future, CUTOFF)
    pd.testing.assert_frame_equal(after, before)
    assert rfm_summary(later, CUTOFF).empty
    # The same property on a realistic log: summaries and the fit at a cutoff are unchanged by
    # a year of purchases after it.
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rng = np.random.default_rng(0)
    log = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(300)],
            "event_timestamp": start + pd.to_timedelta(rng.integers(0, 300, 300), unit="D"),
            "event_type": "purchase",
            "amount": 10.0,
        }
    )
    repeats = log.sample(n=600, replace=True, random_state=1).assign(
        event_timestamp=lambda f: (
            f["event_timestamp"] + pd.to_timedelta(rng.integers(1, 400, 600), unit="D")
        )
    )
    full = pd.concat([log, repeats], ignore_index=True)
    cut = start + pd.Timedelta(days=330)
    early = full[full["event_timestamp"] < cut]
    scores_full, fitted_full = scores_at_cutoff(full, cut)
    scores_early, fitted_early = scores_at_cutoff(early, cut)
    assert fitted_full.params == fitted_early.params
    pd.testing.assert_frame_equal(scores_full, scores_early)
    # The scores as a baseline: one row per customer who bought before the cutoff.
    assert len(scores_full) == early["customer_id"].nunique()
    for h in (14, 28, 90):
        assert scores_full[f"bgnbd_p_purchase_{h}d"].between(0, 1).all()
        assert (scores_full[f"bgnbd_expected_{h}d"] >= scores_full[f"bgnbd_p_purchase_{h}d"]).all()
    assert (scores_full["bgnbd_p_purchase_90d"] > scores_full["bgnbd_p_purchase_14d"]).all()
    with pytest.raises(ValueError, match="no purchase before"):
        scores_at_cutoff(full, start)


def test_summary_of_a_log_without_amounts_has_no_monetary_value() -> None:
    summary = rfm_summary(EVENTS.drop(columns="amount"), CUTOFF)
    assert summary["monetary_value"].isna().all()
    assert summary.loc["A", "frequency"] == 2


def test_feature_values_are_the_baselines_scores_and_ignore_later_purchases() -> None:
    """``bgnbd_p_alive`` and ``bgnbd_expected_purchases_30d`` of the feature pipeline at T equal
    the baseline's scores at cutoff T (an independent summary, :func:`rfm_summary`, and the
    same fit), and a year of purchases after T changes neither the population fit nor them."""
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rng = np.random.default_rng(11)
    first = pd.DataFrame(
        {
            "customer_id": [f"c{i:03d}" for i in range(200)],
            "event_timestamp": start + pd.to_timedelta(rng.integers(0, 300 * 24, 200), unit="h"),
        }
    )
    repeats = first.sample(n=500, replace=True, random_state=2).assign(
        event_timestamp=lambda f: (
            f["event_timestamp"] + pd.to_timedelta(rng.integers(1, 400 * 24, 500), unit="h")
        )
    )
    log = pd.concat([first, repeats], ignore_index=True).assign(
        channel="store", event_type="purchase", amount=10.0
    )
    events = to_canonical_table(log).to_pandas()
    cut = start + pd.Timedelta(days=330, hours=7)  # an intra-day instant
    early = events[events["event_timestamp"] < cut]
    customers = pd.DataFrame({"customer_id": [], "signup_date": pd.to_datetime([], utc=True)})

    rows = compute_snapshots(events, customers, [cut]).set_index("customer_id")
    scores, fitted = scores_at_cutoff(early, cut, (30,))
    con = duckdb.connect()
    con.register("events_in", events)
    assert bgnbd_population("events_in", [cut], connection=con)[cut].params == fitted.params
    con.close()
    bought = rows.loc[scores.index]
    np.testing.assert_allclose(bought["bgnbd_p_alive"], scores["bgnbd_p_alive"], rtol=1e-12)
    np.testing.assert_allclose(
        bought["bgnbd_expected_purchases_30d"], scores["bgnbd_expected_30d"], rtol=1e-12
    )
    assert bought["bgnbd_p_alive"].between(0, 1).all() and (bought["bgnbd_p_alive"] < 1).any()
    # Customers whose first purchase is after the cutoff have no row yet.
    assert set(rows.index) == set(early["customer_id"])
    pd.testing.assert_frame_equal(
        compute_snapshots(early, customers, [cut]).set_index("customer_id"), rows, check_exact=True
    )
