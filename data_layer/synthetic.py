"""Synthetic omnichannel customers whose ground truth is known.

``generate`` simulates customers of six latent archetypes on every channel and returns the
canonical events, the customers (profile) table and the truth the models never see: each
customer's archetype and churn date, and for every customer-day the latent probabilities
``p_purchase`` (at least one purchase) and ``p_active`` (at least one customer-initiated
event). Those probabilities are the ones the simulator samples from, so an oracle built on them
is exact and measures how much signal a model leaves on the table.

How a customer-day is simulated, all vectorised over (customers, days) matrices:

* a latent activity level: per-customer scale x weekly seasonality x a slow AR(1) drift; it
  decays towards 0 once a customer starts drifting away and is 0 after churn and before signup;
* shopping-intent episodes: research days raise browsing on the customer's research channels,
  then buying days raise the purchase rate on the customer's buying channels;
* independent draws given the latent state: browsing counts (Poisson), one Bernoulli purchase
  day, support contacts, and the response to each marketing send; journeys that span channels
  (web research then a store purchase, an email click then an app purchase, an abandoned app
  cart recovered by an SMS) are generated with the purchase they lead to, on the same day;
* returns and reviews are placed on a later day the customer is active anyway, so they never
  change whether a day is active and ``p_active`` stays exact;
* a day loop over all customers (vectorised inside) draws support contacts, complaints and
  survey ratings, and from them the hazard of starting to drift and of churning.

Two variations serve tests and benchmarks. ``drift_at`` changes behaviour from a date on, for
monitoring to detect: a competitor's promotion reshuffles who buys (half the customers take,
from then on, another's purchase rates while keeping their own browsing and past, so the link
a model learned from features to purchases breaks: a concept drift), an app launch moves store
activity to the app, and deal seekers buy half as often. The
``sparse-retail`` profile (:func:`generate_sparse_retail`) is another world: a purchase-only,
one-channel log of customers who buy a few times a year, with $0 orders and identical lines,
as real retail exports are. docs/synthetic.md describes both.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.signal import lfilter
from scipy.special import gammaincc

from data_layer.event_store import (
    buckets_for,
    mark_event_ids_current,
    reset_events,
    store_bucket_of,
    write_customers,
    write_events,
    write_partitioned,
)
from data_layer.live_segment import store_lock
from data_layer.schema import (
    CHANNELS,
    EVENT_SCHEMA,
    EVENT_TYPES,
    event_id_array,
    event_id_hashes_from_codes,
    ranked_repeats,
)
from data_layer.settings import Settings

SCENARIO_FILE = "scenario.json"
"""File of the ground-truth folder that says which world was generated."""
PROFILES: tuple[str, ...] = ("omnichannel", "sparse-retail")
"""The simulated worlds :func:`generate` offers."""

DEFAULT_END = pd.Timestamp("2026-06-29", tz="UTC")
"""End of the default simulated period: fixed, so that output never depends on today."""

DAY_US = 86_400_000_000
BLOCK_CUSTOMERS = 4_096
"""Customers simulated together; fixed so that output does not depend on the machine."""

DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
LOYALTY_TIERS: tuple[str, ...] = ("bronze", "silver", "gold", "platinum")

_CH = {name: i for i, name in enumerate(CHANNELS)}
_ET = {name: i for i, name in enumerate(EVENT_TYPES)}
_FAMILY_OF_TYPE = np.array([fam.value for fam in EVENT_TYPES.values()], dtype=object)

BROWSE_CHANNELS: tuple[str, ...] = ("web", "app", "social", "store")
BUY_CHANNELS: tuple[str, ...] = ("web", "app", "store", "call_center")
_BROWSE_TYPES: dict[str, tuple[tuple[str, float], ...]] = {
    "web": (("page_view", 0.45), ("product_view", 0.33), ("search", 0.12), ("add_to_cart", 0.10)),
    "app": (("app_open", 0.35), ("product_view", 0.33), ("search", 0.14), ("add_to_cart", 0.18)),
    "social": (("social_engagement", 0.75), ("ad_click", 0.25)),
    "store": (("store_visit", 1.0),),
}
"""Event types of the browsing on each channel, with their shares."""

# Latent-state dynamics.
ACTIVITY_SD = 0.2
"""Spread (log scale) of customers' activity within an archetype."""
MIX_SD = 0.15
"""Spread (log scale) of each customer's channel mix around the archetype's."""
PURCHASE_SD = 0.0
"""Spread of purchase rates not explained by browsing (hidden from every feature)."""
AR_RHO = 0.99
"""Day-to-day persistence of the activity drift (half-life about 69 days)."""
AR_SD = 0.1
"""Stationary standard deviation of the log-activity drift."""
K_RESEARCH = 3.0
"""Browsing uplift on research channels during a shopping-intent research phase."""
K_BUY = 0.6
"""Purchase-rate uplift (in units of the base rate) during an intent buying phase."""
RESEARCH_DAYS = (0, 6)
"""Research phase: days 0..6 after an intent episode starts."""
BUYING_DAYS = (4, 10)
"""Buying phase: days 4..10 after an intent episode starts, so purchases follow research."""
EXPLORE_BOOST, EXPLORE_DAYS = 1.0, 15.0
"""New customers browse more right after signup, settling with this time constant."""

# Attitudes, drift and churn.
PRESSURE_DECAY = 0.97
"""Daily decay of the complaint pressure (support contacts, complaints, low ratings)."""
DISSATISFACTION_GAIN = 0.85
SUPPORT_GAIN = 0.05
"""Extra daily support-contact probability of a fully dissatisfied customer."""
SURVEY_RATE = 0.35
"""Share of support contacts followed by a rated survey response."""
CHURN_RATE = 0.035
"""Daily churn hazard per unit of drift progress beyond CHURN_LAG time constants."""
CHURN_LAG = 0.8
ONSET_PRESSURE, CHURN_PRESSURE = 1.5, 0.4
"""How much complaint pressure multiplies the drift-onset and the churn hazards."""

SESSION_EVENTS = 2.0
"""Mean events per web or app browsing session (1 + Poisson)."""
ABANDONED_CART_SMS = 0.35
"""Share of abandoned app carts that trigger a reminder SMS (for SMS-opted customers)."""

# The drift scenario (``generate(..., drift_at=...)``): behaviour from that date on.
DRIFT_RESHUFFLED = 0.5
"""Share of customers whose purchase behaviour is re-drawn at the drift date (a competitor's
promotion reshuffles who buys): each takes, from then on, the purchase rates of another of
them (a random permutation among them, so the total volume stays about the same), while
their browsing and their past stay theirs. What a model learned about how past behaviour
leads to purchases no longer holds for them: a concept drift, which a champion trained
before the date pays for."""
DRIFT_STORE_TO_APP = 0.6
"""Share of store browsing and store purchases that moves to the app from the drift date on."""
DRIFT_ARCHETYPE = "deal_seeker"
DRIFT_PURCHASE_FACTOR = 0.5
"""From the drift date on, DRIFT_ARCHETYPE buys at this multiple of its former rate (a
competitor's deals, say): a change of the purchase concept, not only of the inputs."""

_HOURS = {
    "web": (1.0, .6, .4, .3, .3, .5, 1, 2, 3, 3.5, 3.5, 3.5, 4, 3.8, 3.5, 3.5, 3.8, 4.2, 4.8,
            5.5, 6, 5.5, 4, 2.2),
    "app": (1.2, .7, .4, .3, .3, .5, 1.2, 2.5, 3, 3, 3, 3.2, 3.8, 3.5, 3.2, 3.2, 3.5, 4, 4.8,
            5.8, 6.5, 6.5, 5, 2.8),
    "store": (0,) * 9 + (2, 3.5, 4.5, 5.5, 5.5, 5, 5, 5.5, 6, 5.5, 4, 2.5) + (0,) * 3,
    "call_center": (0,) * 8 + (3, 5, 5.5, 5, 4.5, 4.5, 4.5, 4, 3.5, 3, 2.5, 2) + (0,) * 4,
}  # fmt: skip
_HOURS["social"] = _HOURS["app"]
_HOURS["email"] = _HOURS["web"]

_DOW = {
    "web": (1.1, 1.1, 1.1, 1.05, 1.0, 0.85, 0.8),
    "app": (0.95, 0.95, 0.95, 0.95, 1.0, 1.1, 1.1),
    "social": (1.0, 1.0, 1.0, 1.0, 1.0, 1.05, 1.05),
    "store": (0.8, 0.8, 0.85, 0.9, 1.1, 1.5, 1.2),
    "call_center": (1.15, 1.1, 1.1, 1.1, 1.05, 0.8, 0.6),
}
"""Weekly seasonality per channel (Monday first), normalised to mean 1 when used."""

CAMPAIGNS: dict[str, tuple[str, str, int, int, int]] = {
    # kind: (channel, send event type, weekday, every n weeks, send hour)
    "email": ("email", "email_send", 1, 2, 9),
    "deals": ("email", "email_send", 4, 1, 10),
    "push": ("push", "push_send", 5, 4, 18),
    "sms": ("sms", "sms_send", 3, 4, 12),
}
"""Marketing send schedule: a newsletter every other Tuesday, deals every Friday (to deal
subscribers), push every fourth Saturday and SMS every fourth Thursday."""
CART_CAMPAIGN = "sms-cart-reminder"


@dataclass(frozen=True)
class Archetype:
    """One latent customer type: channel mix, value, responsiveness and how it drifts away.

    Rates are per day for an average customer of the type; ``browse`` and ``research`` are
    indexed by BROWSE_CHANNELS, ``buy`` and ``intent_buy`` by BUY_CHANNELS.
    """

    name: str
    share: float
    browse: tuple[float, float, float, float]
    research: tuple[float, float, float, float]
    buy: tuple[float, float, float, float]
    intent_buy: tuple[float, float, float, float]
    web_to_store: float  # store purchases researched on the web the same day
    cart_recovery: float  # app carts recovered by an SMS reminder
    intent_rate: float  # shopping-intent episodes started per day
    email_research: float  # how much intent raises email opens and clicks
    email_open: float
    email_click: float  # given an open
    email_buy: float  # purchase after a click
    email_buy_app: float  # share of email-driven purchases placed in the app
    push_open: float
    sms_click: float
    email_sub: float
    deals_sub: float
    app_user: float
    sms_opt: float
    amount_median: float
    amount_sigma: float
    return_rate: float
    review_rate: float
    support_rate: float  # daily support-contact probability when satisfied
    dissatisfaction: float  # mean baseline dissatisfaction in [0, 1]
    drift_hazard: float  # daily hazard of starting to drift away (0: drift is scheduled)
    age: tuple[float, ...]
    device: tuple[float, float, float]


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype(
        "digital_first", 0.22,
        browse=(0.0748, 0.0748, 0.0187, 0.0047), research=(1, 1, 0, 0),
        buy=(0.0066, 0.0066, 0.0011, 0), intent_buy=(0.5, 0.5, 0, 0),
        web_to_store=0.00055, cart_recovery=0.0022, intent_rate=1 / 18, email_research=0.3,
        email_open=0.25, email_click=0.2, email_buy=0.1, email_buy_app=0.5,
        push_open=0.3, sms_click=0.15, email_sub=0.6, deals_sub=0.15, app_user=0.9, sms_opt=0.3,
        amount_median=55, amount_sigma=0.6, return_rate=0.10, review_rate=0.10,
        support_rate=0.004, dissatisfaction=0.05, drift_hazard=1 / 10000,
        age=(0.25, 0.35, 0.2, 0.12, 0.06, 0.02),
        device=(0.6, 0.3, 0.1),
    ),
    Archetype(
        "store_loyalist", 0.18,
        browse=(0.0131, 0.0015, 0.0047, 0.0765), research=(1, 0, 0, 0.4),
        buy=(0.0011, 0, 0.0154, 0.00165), intent_buy=(0, 0, 0.9, 0.1),
        web_to_store=0.0033, cart_recovery=0, intent_rate=1 / 25, email_research=0.0,
        email_open=0.15, email_click=0.08, email_buy=0.05, email_buy_app=0.0,
        push_open=0.15, sms_click=0.05, email_sub=0.5, deals_sub=0.05, app_user=0.15, sms_opt=0.15,
        amount_median=40, amount_sigma=0.5, return_rate=0.07, review_rate=0.05,
        support_rate=0.005, dissatisfaction=0.05, drift_hazard=1 / 12000,
        age=(0.03, 0.1, 0.17, 0.25, 0.25, 0.2),
        device=(0.35, 0.45, 0.2),
    ),
    Archetype(
        "deal_seeker", 0.20,
        browse=(0.0187, 0.0337, 0.0234, 0.0071), research=(0.5, 1, 0.5, 0),
        buy=(0.00165, 0.00275, 0.0011, 0), intent_buy=(0.2, 0.8, 0, 0),
        web_to_store=0.00055, cart_recovery=0.0033, intent_rate=1 / 20, email_research=0.8,
        email_open=0.6, email_click=0.45, email_buy=0.3, email_buy_app=0.85,
        push_open=0.4, sms_click=0.35, email_sub=0.95, deals_sub=0.95, app_user=0.8, sms_opt=0.7,
        amount_median=28, amount_sigma=0.5, return_rate=0.12, review_rate=0.08,
        support_rate=0.004, dissatisfaction=0.07, drift_hazard=1 / 8000,
        age=(0.15, 0.3, 0.25, 0.15, 0.1, 0.05),
        device=(0.75, 0.15, 0.1),
    ),
    Archetype(
        "omnichannel_vip", 0.12,
        browse=(0.0952, 0.0952, 0.0425, 0.0765), research=(1, 1, 0.5, 1),
        buy=(0.014, 0.014, 0.018, 0.003), intent_buy=(0.3, 0.3, 0.35, 0.05),
        web_to_store=0.0044, cart_recovery=0.0022, intent_rate=1 / 10, email_research=0.5,
        email_open=0.45, email_click=0.3, email_buy=0.15, email_buy_app=0.5,
        push_open=0.45, sms_click=0.25, email_sub=0.85, deals_sub=0.3, app_user=0.95, sms_opt=0.5,
        amount_median=130, amount_sigma=0.6, return_rate=0.07, review_rate=0.15,
        support_rate=0.006, dissatisfaction=0.03, drift_hazard=1 / 15000,
        age=(0.05, 0.25, 0.3, 0.25, 0.1, 0.05),
        device=(0.5, 0.35, 0.15),
    ),
    Archetype(
        "drifting_churner", 0.15,
        browse=(0.0337, 0.0187, 0.014, 0.0187), research=(1, 0.5, 0, 0),
        buy=(0.0055, 0.0022, 0.0044, 0.0011), intent_buy=(0.5, 0.1, 0.4, 0),
        web_to_store=0.0011, cart_recovery=0.0011, intent_rate=1 / 25, email_research=0.2,
        email_open=0.2, email_click=0.12, email_buy=0.08, email_buy_app=0.3,
        push_open=0.2, sms_click=0.1, email_sub=0.6, deals_sub=0.2, app_user=0.5, sms_opt=0.25,
        amount_median=45, amount_sigma=0.6, return_rate=0.12, review_rate=0.12,
        support_rate=0.012, dissatisfaction=0.2, drift_hazard=0.0,
        age=(0.1, 0.2, 0.25, 0.2, 0.15, 0.1),
        device=(0.5, 0.35, 0.15),
    ),
    Archetype(
        "new_customer", 0.13,
        browse=(0.0374, 0.0187, 0.0327, 0.014), research=(1, 0.5, 1, 0),
        buy=(0.0033, 0.0022, 0.0011, 0), intent_buy=(0.6, 0.3, 0.1, 0),
        web_to_store=0.00055, cart_recovery=0.0011, intent_rate=1 / 15, email_research=0.3,
        email_open=0.4, email_click=0.25, email_buy=0.1, email_buy_app=0.4,
        push_open=0.3, sms_click=0.1, email_sub=0.8, deals_sub=0.3, app_user=0.5, sms_opt=0.25,
        amount_median=38, amount_sigma=0.5, return_rate=0.08, review_rate=0.08,
        support_rate=0.01, dissatisfaction=0.05, drift_hazard=1 / 8000,
        age=(0.3, 0.3, 0.2, 0.1, 0.07, 0.03),
        device=(0.6, 0.3, 0.1),
    ),
)  # fmt: skip
"""The six latent archetypes, with shares that sum to 1."""
ARCHETYPE_NAMES: tuple[str, ...] = tuple(a.name for a in ARCHETYPES)
_DRIFTING = ARCHETYPE_NAMES.index("drifting_churner")
_NEW = ARCHETYPE_NAMES.index("new_customer")


@dataclass(frozen=True)
class GeneratedData:
    """One simulated world: what a business would log, and the truth behind it."""

    events: pa.Table
    """Canonical events in :data:`data_layer.schema.EVENT_SCHEMA`."""
    customers: pd.DataFrame
    """Profile table in CUSTOMER_SCHEMA columns."""
    truth_customers: pd.DataFrame
    """customer_id, archetype, archetype_id, signup_date, churn_date (NaT if never),
    drift_start (NaT if never): when the customer started drifting away."""
    truth_daily: pd.DataFrame
    """One row per customer and day of the period: customer_id (categorical), date (UTC
    midnight), p_purchase and p_active (float32), the probabilities the simulator sampled."""
    scenario: dict = field(default_factory=lambda: {"profile": "omnichannel", "drift_at": None})
    """What was simulated: the profile, and the drift date and its changes when there is one."""


@dataclass
class _Population:
    """Per-customer latent parameters, one array entry per customer."""

    arch: np.ndarray
    signup: np.ndarray  # day index of signup (negative: before the period)
    onset: np.ndarray  # day drift starts (inf: not drifting)
    tau: np.ndarray  # drift time constant, days
    churn: np.ndarray  # first silent day (days: not churned within the period)
    s0: np.ndarray  # baseline dissatisfaction
    support: np.ndarray
    drift_hazard: np.ndarray
    browse: np.ndarray  # (n, 4) daily browse rate per BROWSE_CHANNELS
    research: np.ndarray  # (n, 4)
    buy: np.ndarray  # (n, 4) daily purchase rate per BUY_CHANNELS
    intent_buy: np.ndarray  # (n, 4)
    web_to_store: np.ndarray
    cart_recovery: np.ndarray
    intent_rate: np.ndarray
    email_research: np.ndarray
    email_open: np.ndarray
    email_click: np.ndarray
    email_buy: np.ndarray
    email_buy_app: np.ndarray
    push_open: np.ndarray
    sms_click: np.ndarray
    subscribed: dict[str, np.ndarray]  # campaign kind -> bool per customer
    app_user: np.ndarray
    sms_opt: np.ndarray
    amount_mu: np.ndarray  # log of the customer's median order value
    amount_sigma: np.ndarray
    return_rate: np.ndarray
    review_rate: np.ndarray
    device: np.ndarray  # preferred device code
    region: np.ndarray
    age: np.ndarray
    tier: np.ndarray

    @property
    def n(self) -> int:
        return len(self.arch)


@dataclass(frozen=True)
class _Calendar:
    """The simulated days and the marketing sends scheduled on them."""

    start: pd.Timestamp
    days: int
    dow: np.ndarray  # weekday of each day, Monday = 0
    campaign_days: dict[str, np.ndarray]  # kind -> day indices with a send
    campaign_codes: dict[str, np.ndarray]  # kind -> campaign code of each of those days
    campaign_names: list[str]


_COLUMN_DTYPES = (np.int32, np.int64, np.int8, np.int8, np.float64, np.int64, np.int8,
                  np.float64, np.int32)  # fmt: skip
"""customer, time (us since the period start), channel, event type, amount, session, device,
rating, campaign: codes index CHANNELS, EVENT_TYPES, DEVICES and the campaign names; -1 or NaN
means absent."""


class _Sink:
    """Event columns produced by one block's simulation parts."""

    def __init__(self, first_session: int) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.sessions = first_session

    def new_sessions(self, count: int) -> np.ndarray:
        """Fresh session numbers, in simulation order (deterministic)."""
        ids = np.arange(self.sessions, self.sessions + count, dtype=np.int64)
        self.sessions += count
        return ids

    def add(
        self,
        cust,
        t_us,
        channel,
        etype,
        *,
        amount=None,
        session=None,
        device=None,
        rating=None,
        campaign=None,
    ) -> None:
        n = len(cust)
        if n == 0:
            return
        values = (cust, t_us, channel, etype, amount, session, device, rating, campaign)
        fills = (0, 0, -1, -1, np.nan, -1, -1, np.nan, -1)
        self.parts.append(
            tuple(
                np.full(n, fill, dtype=dtype)
                if value is None
                else np.broadcast_to(np.asarray(value, dtype=dtype), (n,))
                for value, fill, dtype in zip(values, fills, _COLUMN_DTYPES, strict=True)
            )
        )

    def finish(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The block's columns ordered by (customer, time), with distinct times per customer.

        Times get sub-second jitter (real logs are not aligned on whole seconds), and exact
        ties are nudged apart by a microsecond: two events of one customer at the same instant
        could hash to the same event_id and be merged by the store.
        """
        if not self.parts:
            return [np.empty(0, dtype=d) for d in _COLUMN_DTYPES]
        cols = [np.concatenate(c) for c in zip(*self.parts, strict=True)]
        cust, t_us = cols[0], cols[1] + rng.integers(0, 1_000_000, size=len(cols[0]))
        span = int(t_us.max()) + 1024
        key = (cust - cust.min()).astype(np.int64) * span + t_us
        order = np.argsort(key, kind="stable")
        key = key[order]
        while True:
            tie = np.flatnonzero(key[1:] == key[:-1]) + 1
            if tie.size == 0:
                break
            key[tie] += 1
        cols = [c[order] for c in cols]
        cols[1] = key - (cols[0] - cust.min()).astype(np.int64) * span
        return cols


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate(
    n_customers: int,
    days: int,
    seed: int,
    end: pd.Timestamp | None = None,
    *,
    profile: str = "omnichannel",
    drift_at: pd.Timestamp | str | None = None,
) -> GeneratedData:
    """Simulate ``n_customers`` over the ``days`` days ending at ``end`` (UTC midnight).

    Pure and deterministic: the same arguments give byte-identical frames. ``end`` defaults to
    :data:`DEFAULT_END`, never today, so that output is reproducible.

    ``profile`` picks the world: ``omnichannel`` (the six archetypes on every channel) or
    ``sparse-retail`` (purchases only, on one channel, a few a year: see
    :func:`generate_sparse_retail`). ``drift_at`` (omnichannel only) is the first day of the
    drift scenario: from that UTC day on half the customers' purchase rates are reshuffled
    among them, the channel mix moves from store to app and one archetype's purchase rate
    changes (DRIFT_* constants). Without it the output is exactly the world without drift.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if n_customers < 1 or days < 1:
        raise ValueError(f"need n_customers >= 1 and days >= 1, got {n_customers}, {days}")
    end_ts = _utc_midnight(DEFAULT_END if end is None else end)
    start = end_ts - pd.Timedelta(days=days)
    drift_day = None if drift_at is None else _drift_day(drift_at, start, days)
    if profile == "sparse-retail":
        if drift_day is not None:
            raise ValueError("the drift scenario is defined for the omnichannel profile only")
        return generate_sparse_retail(n_customers, days, seed, end_ts)
    world = _OmnichannelWorld(n_customers, days, seed, start, drift_day)
    p_purchase = np.zeros((n_customers, days), dtype=np.float32)
    p_active = np.zeros((n_customers, days), dtype=np.float32)
    tables: list[pa.Table] = []
    for block in world.blocks():
        p_purchase[block.lo : block.hi] = block.p_purchase
        p_active[block.lo : block.hi] = block.p_active
        tables.append(block.events)
    return GeneratedData(
        events=pa.concat_tables(tables),
        customers=world.customers(),
        truth_customers=world.truth_customers(),
        truth_daily=_truth_daily(world.ids, start, p_purchase, p_active),
        scenario=world.scenario(),
    )


@dataclass(frozen=True)
class _Block:
    """One block of simulated customers ``[lo, hi)``: their events and daily probabilities."""

    lo: int
    hi: int
    events: pa.Table
    p_purchase: np.ndarray
    p_active: np.ndarray


class _OmnichannelWorld:
    """The omnichannel simulation, one block of :data:`BLOCK_CUSTOMERS` at a time.

    The population and attitudes are drawn up front (small per-customer arrays); each block's
    events come from its own child seed, so :func:`generate` (every block in memory) and
    :func:`generate_into` (each block written as it goes) give the same events.
    """

    def __init__(
        self, n_customers: int, days: int, seed: int, start: pd.Timestamp, drift_day: int | None
    ) -> None:
        self.n, self.days, self.seed, self.start, self.drift_day = (
            n_customers,
            days,
            seed,
            start,
            drift_day,
        )
        root = np.random.SeedSequence([seed, n_customers, days])
        pop_seq, att_seq, self._block_seq = root.spawn(3)
        self.pop = _draw_population(np.random.default_rng(pop_seq), n_customers, days)
        self.cal = _calendar(start, days)
        self.att = _simulate_attitudes(np.random.default_rng(att_seq), self.pop, days)
        self.ids = _customer_ids(n_customers)
        # A fourth child seed, spawned only with a drift: the world without one is untouched.
        self.donor = (
            None
            if drift_day is None
            else _purchase_donors(np.random.default_rng(root.spawn(1)[0]), n_customers)
        )

    def blocks(self) -> Iterator[_Block]:
        sessions = 0
        n_blocks = -(-self.n // BLOCK_CUSTOMERS)
        for block, child in zip(range(n_blocks), self._block_seq.spawn(n_blocks), strict=True):
            lo = block * BLOCK_CUSTOMERS
            hi = min(self.n, lo + BLOCK_CUSTOMERS)
            rng = np.random.default_rng(child)
            sink = _Sink(sessions)
            p_purchase, p_active = _simulate_block(
                rng, self.pop, lo, hi, self.cal, self.att, sink, self.drift_day, self.donor
            )
            columns = sink.finish(rng)
            columns[0] = columns[0] - lo
            columns[5] = np.where(columns[5] >= 0, columns[5] - sessions, -1)
            names = _session_names(sessions, sink.sessions, self.seed)
            events = _events_table(columns, self.ids[lo:hi], names, self.cal)
            sessions = sink.sessions
            yield _Block(lo, hi, events, p_purchase, p_active)

    def customers(self) -> pd.DataFrame:
        return _customers_frame(self.pop, self.ids, self.start)

    def truth_customers(self) -> pd.DataFrame:
        return _truth_customers(self.pop, self.ids, self.start, self.days)

    def scenario(self) -> dict:
        return _omnichannel_scenario(self.start, self.drift_day)


GENERATE_FLUSH_EVENTS = 4_000_000
"""Events :func:`generate_into` holds before writing them out (about 0.6 GB of Arrow)."""


def generate_into(
    settings: Settings,
    n_customers: int,
    days: int,
    seed: int,
    end: pd.Timestamp | None = None,
    *,
    profile: str = "omnichannel",
    drift_at: pd.Timestamp | str | None = None,
    flush_events: int = GENERATE_FLUSH_EVENTS,
    buckets: int | None = None,
) -> dict:
    """Simulate like :func:`generate` and replace the home's data with the world, writing each
    block's events as it goes instead of holding the world: memory is bounded by
    ``flush_events`` and one store bucket, not by the number of customers. ``buckets``:
    the store's bucket count (default :func:`data_layer.event_store.buckets_for`).

    The stored events, profiles and truth are those :func:`write_generated` writes for
    :func:`generate` with the same arguments (rows in another order inside files). Blocks are
    staged one file per store bucket, then each bucket's staged files are rewritten as its
    month files, so the store has one file per month and bucket whatever the flushes. The
    sparse retail world is small (purchases only) and is written whole.
    """
    if profile != "omnichannel":
        return write_generated(
            settings, generate(n_customers, days, seed, end, profile=profile, drift_at=drift_at)
        )
    if n_customers < 1 or days < 1:
        raise ValueError(f"need n_customers >= 1 and days >= 1, got {n_customers}, {days}")
    end_ts = _utc_midnight(DEFAULT_END if end is None else end)
    start = end_ts - pd.Timedelta(days=days)
    drift_day = None if drift_at is None else _drift_day(drift_at, start, days)
    world = _OmnichannelWorld(n_customers, days, seed, start, drift_day)
    buckets = buckets or buckets_for(n_customers)
    stage = settings.home / "tmp" / f"generate-{uuid.uuid4().hex[:12]}"
    settings.ground_truth_dir.mkdir(parents=True, exist_ok=True)
    daily_path = settings.ground_truth_dir / "daily.parquet"
    daily_tmp = daily_path.with_suffix(".partial")
    daily: pq.ParquetWriter | None = None
    written = 0
    try:
        pending: list[pa.Table] = []
        held = flushes = 0
        for block in world.blocks():
            frame = _truth_daily(world.ids[block.lo : block.hi], start, block.p_purchase,
                                 block.p_active)  # fmt: skip
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if daily is None:
                daily = pq.ParquetWriter(daily_tmp, table.schema, compression="zstd")
            daily.write_table(table)
            pending.append(block.events)
            held += block.events.num_rows
            if held >= flush_events:
                _stage(stage, pa.concat_tables(pending), buckets, flushes)
                pending, held, flushes = [], 0, flushes + 1
        if pending:
            _stage(stage, pa.concat_tables(pending), buckets, flushes)
        daily.close()
        daily = None
        with store_lock(settings):
            reset_events(settings, buckets)
            for bucket_dir in sorted(stage.glob("bucket=*")):
                table = pq.ParquetDataset(
                    sorted(bucket_dir.glob("*.parquet")), partitioning=None
                ).read()
                if pc.count_distinct(table.column("event_id")).as_py() != table.num_rows:
                    raise RuntimeError("the simulation repeated an event id")  # never expected
                write_partitioned(settings, table, name="generated")
                written += table.num_rows
                del table
            mark_event_ids_current(settings)
        daily_tmp.rename(daily_path)
    finally:
        if daily is not None:
            daily.close()
        daily_tmp.unlink(missing_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
    customers = world.customers()
    write_customers(settings, customers)
    truth = world.truth_customers()
    truth.to_parquet(settings.ground_truth_dir / "customers.parquet", index=False)
    scenario = world.scenario()
    (settings.ground_truth_dir / SCENARIO_FILE).write_text(
        json.dumps(scenario, indent=2, sort_keys=True) + "\n"
    )
    return _counts(scenario, written, 0, customers, truth, days)


def _stage(stage: Path, events: pa.Table, buckets: int, flush: int) -> None:
    """Write one flush of events as one file per store bucket under ``stage``."""
    bucket = store_bucket_of(events, buckets)
    order = np.argsort(bucket, kind="stable")
    ordered = events.take(pa.array(order))
    bucket = bucket[order]
    cuts = np.flatnonzero(np.diff(bucket)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(bucket)], strict=True):
        folder = stage / f"bucket={int(bucket[lo]):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(ordered.slice(lo, hi - lo), folder / f"flush-{flush:05d}.parquet",
                       compression="lz4")  # fmt: skip


def _omnichannel_scenario(start: pd.Timestamp, drift_day: int | None) -> dict:
    if drift_day is None:
        return {"profile": "omnichannel", "drift_at": None}
    return {
        "profile": "omnichannel",
        "drift_at": f"{start + pd.Timedelta(days=drift_day):%Y-%m-%d}",
        "reshuffled": DRIFT_RESHUFFLED,
        "store_to_app": DRIFT_STORE_TO_APP,
        "archetype": DRIFT_ARCHETYPE,
        "purchase_factor": DRIFT_PURCHASE_FACTOR,
    }


def _drift_day(drift_at: pd.Timestamp | str, start: pd.Timestamp, days: int) -> int:
    """Day index of ``drift_at`` (a UTC day) in the period; it must leave days on both sides."""
    try:
        when = _utc_midnight(drift_at)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"drift date {drift_at!r} is not a date: {exc}") from None
    day = (when - start).days
    if not 0 < day < days:
        last = start + pd.Timedelta(days=days - 1)
        raise ValueError(
            f"drift date {when:%Y-%m-%d} must fall after the first simulated day "
            f"{start:%Y-%m-%d} and on or before the last {last:%Y-%m-%d}"
        )
    return day


def write_generated(settings: Settings, data: GeneratedData) -> dict:
    """Replace the home's events, customers and ground truth with ``data``; return counts.

    The CLI prints the returned dict as its summary.
    """
    buckets = buckets_for(len(data.customers))
    result = write_events(settings, data.events, replace=True, buckets=buckets)
    write_customers(settings, data.customers)
    settings.ground_truth_dir.mkdir(parents=True, exist_ok=True)
    data.truth_customers.to_parquet(settings.ground_truth_dir / "customers.parquet", index=False)
    pq.write_table(
        pa.Table.from_pandas(data.truth_daily, preserve_index=False),
        settings.ground_truth_dir / "daily.parquet",
        compression="zstd",
    )
    (settings.ground_truth_dir / SCENARIO_FILE).write_text(
        json.dumps(data.scenario, indent=2, sort_keys=True) + "\n"
    )
    return _counts(
        data.scenario,
        result.written,
        result.duplicates,
        data.customers,
        data.truth_customers,
        len(data.truth_daily) // max(1, len(data.customers)),
    )


def _counts(
    scenario: dict,
    written: int,
    duplicates: int,
    customers: pd.DataFrame,
    truth: pd.DataFrame,
    days: int,
) -> dict:
    counts = {
        "profile": scenario["profile"],
        "events": written,
        "duplicates": duplicates,
        "customers": len(customers),
        "churned": int(truth["churn_date"].notna().sum()),
        "days": days,
        "archetypes": truth["archetype"].value_counts().sort_index().to_dict(),
    }
    if scenario.get("drift_at"):
        counts["drift_at"] = scenario["drift_at"]
    return counts


def load_truth(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ground truth written by :func:`write_generated`: (truth_customers, truth_daily)."""
    folder = settings.ground_truth_dir
    paths = (folder / "customers.parquet", folder / "daily.parquet")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"no ground truth at {', '.join(missing)}: run `omniscore generate` first"
        )
    return pd.read_parquet(paths[0]), pd.read_parquet(paths[1])


def load_scenario(settings: Settings) -> dict:
    """What the home's generated world is (``GeneratedData.scenario``): its profile, and its
    drift date and changes when it has one. Monitoring tests read the date from here."""
    path = settings.ground_truth_dir / SCENARIO_FILE
    if not path.exists():
        raise FileNotFoundError(f"no scenario at {path}: run `omniscore generate` first")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# Population, calendar and attitudes
# --------------------------------------------------------------------------------------------


def _utc_midnight(ts: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor("D")


def _customer_ids(n: int) -> np.ndarray:
    width = max(6, len(str(n - 1)))
    return np.array([f"C{i:0{width}d}" for i in range(n)], dtype=object)


def _param(name: str, arch: np.ndarray) -> np.ndarray:
    values = np.array([getattr(a, name) for a in ARCHETYPES], dtype=np.float64)
    return values[arch]


def _beta_around(rng: np.random.Generator, mean: np.ndarray, concentration: float) -> np.ndarray:
    mean = np.clip(mean, 1e-3, 1 - 1e-3)
    return rng.beta(mean * concentration, (1 - mean) * concentration)


def _categorical_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One category per row of a (rows, k) probability matrix."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((u[:, None] >= cum).sum(axis=1), probs.shape[1] - 1)


def _draw_population(rng: np.random.Generator, n: int, days: int) -> _Population:
    """Each customer's archetype, lifetime, channel rates, responsiveness and profile."""
    shares = np.array([a.share for a in ARCHETYPES])
    counts = np.floor(shares * n).astype(int)
    counts[np.argsort(-(shares * n - counts))[: n - counts.sum()]] += 1
    arch = rng.permutation(np.repeat(np.arange(len(ARCHETYPES)), counts)).astype(np.int8)

    # Signups: most customers before the period, some during it, new customers at its end.
    signup = rng.integers(-4 * 365, 0, size=n)
    joins_during = (rng.random(n) < 0.15) & (arch != _DRIFTING)
    signup[joins_during] = rng.integers(0, max(1, int(0.6 * days)), size=joins_during.sum())
    is_new = arch == _NEW
    recent = max(2, min(90, days // 2))
    signup[is_new] = rng.integers(days - recent, max(days - recent + 1, days - 3), is_new.sum())
    drifting = arch == _DRIFTING
    signup[drifting] = rng.integers(-4 * 365, -60, size=drifting.sum())

    onset = np.full(n, np.inf)
    onset[drifting] = rng.uniform(-30, days - 30, size=drifting.sum())
    tau = rng.uniform(20, 40, size=n)

    activity = rng.lognormal(-(ACTIVITY_SD**2) / 2, ACTIVITY_SD, size=n)
    mix_sd = np.where(is_new, 2 * MIX_SD, MIX_SD)[:, None]
    mix = np.exp(rng.standard_normal((n, 4)) * mix_sd - mix_sd**2 / 2)

    def per_channel(name: str) -> np.ndarray:
        return np.array([getattr(a, name) for a in ARCHETYPES], dtype=np.float64)[arch]

    browse = per_channel("browse") * mix * activity[:, None]
    buy = per_channel("buy")
    research = per_channel("research")
    intent_buy = per_channel("intent_buy")
    app_user = rng.random(n) < _param("app_user", arch)
    # Customers without the app browse and buy on the web instead.
    for rates in (browse, buy, intent_buy):
        rates[:, 0] += rates[:, 1] * ~app_user
        rates[:, 1] *= app_user
    sms_opt = rng.random(n) < _param("sms_opt", arch)
    # Customers buy where and as much as they browse, so their behaviour reveals their rate.
    purchase_scale = activity * rng.lognormal(-(PURCHASE_SD**2) / 2, PURCHASE_SD, size=n)
    buy *= purchase_scale[:, None] * np.column_stack([mix[:, 0], mix[:, 1], mix[:, 3], mix[:, 3]])

    subscribed = {
        "email": rng.random(n) < _param("email_sub", arch),
        "deals": rng.random(n) < _param("deals_sub", arch),
        "push": app_user & (rng.random(n) < 0.6),
        "sms": sms_opt.copy(),
    }

    def weights(name: str, k: int) -> np.ndarray:
        return np.array([getattr(a, name) for a in ARCHETYPES])[arch].reshape(n, k)

    return _Population(
        arch=arch,
        signup=signup.astype(np.int32),
        onset=onset,
        tau=tau,
        churn=np.full(n, days, dtype=np.int32),
        s0=_beta_around(rng, _param("dissatisfaction", arch), 20),
        support=_param("support_rate", arch) * rng.lognormal(-0.08, 0.4, size=n),
        drift_hazard=_param("drift_hazard", arch),
        browse=browse.astype(np.float32),
        research=research.astype(np.float32),
        buy=buy.astype(np.float32),
        intent_buy=intent_buy.astype(np.float32),
        web_to_store=(_param("web_to_store", arch) * purchase_scale).astype(np.float32),
        cart_recovery=(_param("cart_recovery", arch) * purchase_scale * app_user * sms_opt).astype(
            np.float32
        ),
        intent_rate=_param("intent_rate", arch).astype(np.float32),
        email_research=_param("email_research", arch),
        email_open=_beta_around(rng, _param("email_open", arch), 12),
        email_click=_beta_around(rng, _param("email_click", arch), 12),
        email_buy=_param("email_buy", arch),
        email_buy_app=_param("email_buy_app", arch) * app_user,
        push_open=_beta_around(rng, _param("push_open", arch), 12),
        sms_click=_beta_around(rng, _param("sms_click", arch), 12),
        subscribed=subscribed,
        app_user=app_user,
        sms_opt=sms_opt,
        amount_mu=np.log(_param("amount_median", arch)) + rng.normal(0, 0.3, size=n),
        amount_sigma=_param("amount_sigma", arch),
        return_rate=_param("return_rate", arch),
        review_rate=_param("review_rate", arch),
        device=_categorical_rows(rng, weights("device", 3)).astype(np.int8),
        region=rng.integers(0, len(REGIONS), size=n).astype(np.int8),
        age=_categorical_rows(rng, weights("age", 6)).astype(np.int8),
        tier=_loyalty_tiers(rng, activity, arch),
    )


LOYALTY_SHARES = (0.45, 0.30, 0.17, 0.08)
"""Share of customers in each loyalty tier, bronze to platinum."""


def _loyalty_tiers(rng: np.random.Generator, activity: np.ndarray, arch: np.ndarray) -> np.ndarray:
    """Loyalty tier by (noisy) customer value, the way a programme ranks its members."""
    spend = np.array([sum(a.buy) * a.amount_median for a in ARCHETYPES], dtype=np.float64)[arch]
    score = np.log(activity * spend) + rng.normal(0, 0.25, size=len(arch))
    cuts = np.quantile(score, np.cumsum(LOYALTY_SHARES)[:-1])
    return np.searchsorted(cuts, score).astype(np.int8)


def _calendar(start: pd.Timestamp, days: int) -> _Calendar:
    """Weekdays of the period and the campaign days of each kind, with campaign ids."""
    dow = ((start.dayofweek + np.arange(days)) % 7).astype(np.int8)
    week = (np.arange(days) + start.dayofweek) // 7
    dates = pd.date_range(start, periods=days, freq="D")
    campaign_days: dict[str, np.ndarray] = {}
    campaign_codes: dict[str, np.ndarray] = {}
    names: list[str] = [CART_CAMPAIGN]
    for kind, (_, _, weekday, every, _) in CAMPAIGNS.items():
        on = np.flatnonzero((dow == weekday) & (week % every == 0))
        campaign_days[kind] = on
        campaign_codes[kind] = np.arange(len(names), len(names) + len(on), dtype=np.int32)
        names.extend(f"{kind}-{dates[d]:%Y%m%d}" for d in on)
    return _Calendar(start, days, dow, campaign_days, campaign_codes, names)


def _drift_progress(onset: np.ndarray, tau: np.ndarray, day) -> np.ndarray:
    """Time constants elapsed since the drift started (0 before it, or when not drifting)."""
    return np.maximum(day - onset, 0.0) / tau


def _dissatisfaction(s0: np.ndarray, progress: np.ndarray) -> np.ndarray:
    """Dissatisfaction in [0, 1): the baseline, rising towards 1 as a customer drifts away."""
    return s0 + (1 - s0) * DISSATISFACTION_GAIN * (1 - np.exp(-progress))


def _support_probability(support: np.ndarray, dissatisfaction: np.ndarray) -> np.ndarray:
    """Daily probability of a support contact or complaint."""
    return support + SUPPORT_GAIN * dissatisfaction


def _ratings(rng: np.random.Generator, dissatisfaction: np.ndarray) -> np.ndarray:
    """Ratings 1-5 of reviews and surveys: unhappy customers rate low."""
    raw = 4.4 - 3.2 * dissatisfaction + rng.normal(0, 0.9, size=len(dissatisfaction))
    return np.clip(np.rint(raw), 1, 5)


@dataclass(frozen=True)
class _Attitudes:
    """Attitudinal events drawn by the day loop: support contacts and complaints."""

    cust: np.ndarray
    day: np.ndarray
    complaint: np.ndarray  # bool; otherwise a support contact
    survey_rating: np.ndarray  # rating of the follow-up survey, NaN when none


def _simulate_attitudes(rng: np.random.Generator, pop: _Population, days: int) -> _Attitudes:
    """Day by day: support contacts and complaints, then drift onset and churn hazards.

    Complaint pressure (support contacts, complaints and low survey ratings, decaying) raises
    the hazard of starting to drift and, once drifting, of churning. Sets ``pop.onset`` and
    ``pop.churn`` in place.
    """
    n = pop.n
    onset, churn = pop.onset, pop.churn
    pressure = np.zeros(n)
    parts: list[tuple[np.ndarray, ...]] = []
    for day in range(days):
        alive = (pop.signup <= day) & (churn > day)
        progress = _drift_progress(onset, pop.tau, day)
        s = _dissatisfaction(pop.s0, progress)
        p = np.where(alive, _support_probability(pop.support, s), 0.0)
        hit = np.flatnonzero(rng.random(n) < p)
        pressure *= PRESSURE_DECAY
        if hit.size:
            sh = s[hit]
            complaint = rng.random(hit.size) < 0.15 + 0.45 * sh
            survey = ~complaint & (rng.random(hit.size) < SURVEY_RATE)
            rating = np.where(survey, _ratings(rng, sh), np.nan)
            pressure[hit] += 1 + complaint + 2 * (rating <= 2)
            parts.append((hit, np.full(hit.size, day), complaint, rating))
        waiting = np.flatnonzero(alive & np.isinf(onset))
        hazard = pop.drift_hazard[waiting] * (1 + ONSET_PRESSURE * pressure[waiting])
        onset[waiting[rng.random(waiting.size) < hazard]] = day + 1
        drifting = np.flatnonzero(alive & (progress > 0))
        hazard = (
            CHURN_RATE
            * np.clip(progress[drifting] - CHURN_LAG, 0, 2.5)
            * (1 + CHURN_PRESSURE * pressure[drifting])
        )
        churn[drifting[rng.random(drifting.size) < hazard]] = day + 1
    if not parts:
        empty = np.empty(0)
        return _Attitudes(empty.astype(np.int64), empty.astype(np.int64), empty.astype(bool), empty)
    cust, day_, complaint, rating = (np.concatenate(c) for c in zip(*parts, strict=True))
    return _Attitudes(cust, day_, complaint, rating)


# --------------------------------------------------------------------------------------------
# One block of customers over all days
# --------------------------------------------------------------------------------------------


def _dow_matrix(cal: _Calendar, channel: str) -> np.ndarray:
    profile = np.array(_DOW[channel], dtype=np.float32)
    return (profile / profile.mean())[cal.dow][None, :]


def _window_any(cumulative: np.ndarray, near: int, far: int) -> np.ndarray:
    """Whether any episode started between ``far`` and ``near`` days before each day."""
    rows, days = cumulative.shape
    padded = np.concatenate([np.zeros((rows, far + 1), dtype=cumulative.dtype), cumulative], axis=1)
    return (padded[:, far + 1 - near : far + 1 - near + days] - padded[:, :days]) > 0


def _seconds_in_day(rng: np.random.Generator, channel: str, size: int) -> np.ndarray:
    """Time of day in seconds, following the channel's hourly profile."""
    weights = np.asarray(_HOURS[channel], dtype=np.float64)
    cum = np.cumsum(weights) / weights.sum()
    hour = np.searchsorted(cum, rng.random(size), side="right")
    return np.minimum(hour, 23) * 3600 + rng.integers(0, 3600, size=size)


def _at(day: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Microseconds since the period start, kept inside the given day."""
    seconds = np.clip(seconds, 0, 86_399)
    return day.astype(np.int64) * DAY_US + seconds.astype(np.int64) * 1_000_000


def _devices(rng: np.random.Generator, preferred: np.ndarray, mobile_only: bool) -> np.ndarray:
    """Device of digital events: mostly the preferred one; apps, push and SMS are handheld."""
    if mobile_only:
        return np.where(preferred == 2, 2, 0).astype(np.int8)
    other = rng.integers(0, len(DEVICES), size=len(preferred))
    return np.where(rng.random(len(preferred)) < 0.75, preferred, other).astype(np.int8)


@dataclass(frozen=True)
class _BlockRates:
    """A block's daily rates per channel: (customers, 1) columns, or (customers, days)
    matrices when they change over time (the drift scenario)."""

    browse: list[np.ndarray]  # per BROWSE_CHANNELS
    buy: list[np.ndarray]  # per BUY_CHANNELS
    intent_buy: list[np.ndarray]  # per BUY_CHANNELS
    base_total: np.ndarray  # the customer's total base purchase rate, which intent scales
    web_to_store: np.ndarray
    cart_recovery: np.ndarray


def _block_rates(pop: _Population, sl: slice | np.ndarray) -> _BlockRates:
    return _BlockRates(
        browse=[pop.browse[sl, k, None] for k in range(len(BROWSE_CHANNELS))],
        buy=[pop.buy[sl, k, None] for k in range(len(BUY_CHANNELS))],
        intent_buy=[pop.intent_buy[sl, k, None] for k in range(len(BUY_CHANNELS))],
        base_total=pop.buy[sl].sum(axis=1)[:, None],
        web_to_store=pop.web_to_store[sl, None],
        cart_recovery=pop.cart_recovery[sl, None],
    )


def _purchase_donors(rng: np.random.Generator, n: int) -> np.ndarray:
    """For each customer, whose purchase rates they have from the drift date on: themselves,
    or for a DRIFT_RESHUFFLED share, another of that share (a random permutation of it)."""
    donor = np.arange(n)
    moved = np.flatnonzero(rng.random(n) < DRIFT_RESHUFFLED)
    donor[moved] = rng.permutation(moved)
    return donor


def _drift_purchase_factor(arch: np.ndarray, day, drift_day: int) -> np.ndarray:
    """Multiplier of purchase rates: DRIFT_PURCHASE_FACTOR for the drifting archetype from
    ``drift_day`` on, 1 otherwise (broadcast over ``arch`` and ``day``)."""
    slowed = (arch == ARCHETYPE_NAMES.index(DRIFT_ARCHETYPE)) & (day >= drift_day)
    return np.where(slowed, np.float32(DRIFT_PURCHASE_FACTOR), np.float32(1.0))


def _drifted_rates(
    pop: _Population, sl: slice, rates: _BlockRates, days: int, drift_day: int, donor: np.ndarray
) -> _BlockRates:
    """The rates of the drift scenario, as (customers, days) matrices.

    From ``drift_day`` on, the DRIFT_RESHUFFLED share of customers buy at the rates of their
    ``donor`` (base, intent, web-researched and cart-recovery rates; browsing stays theirs);
    then DRIFT_STORE_TO_APP of each customer's store browsing and store purchases (base,
    intent and web-researched) move to the app (an app launch with in-store pickup, say:
    customers without the app take it up for this), and DRIFT_ARCHETYPE's purchase rates are
    multiplied by DRIFT_PURCHASE_FACTOR. Nothing else changes.
    """
    after = (np.arange(days) >= drift_day)[None, :]
    factor = _drift_purchase_factor(pop.arch[sl, None], np.arange(days)[None, :], drift_day)
    move = np.float32(DRIFT_STORE_TO_APP)
    theirs = _block_rates(pop, donor[sl])

    def switch(own: np.ndarray, new: np.ndarray) -> np.ndarray:
        return np.where(after, new, own).astype(np.float32)

    rates = _BlockRates(
        browse=rates.browse,
        buy=list(map(switch, rates.buy, theirs.buy)),
        intent_buy=list(map(switch, rates.intent_buy, theirs.intent_buy)),
        base_total=switch(rates.base_total, theirs.base_total),
        web_to_store=switch(rates.web_to_store, theirs.web_to_store),
        cart_recovery=switch(rates.cart_recovery, theirs.cart_recovery),
    )

    def to_app(per_channel: list[np.ndarray], store: int, app: int) -> list[np.ndarray]:
        out = [np.broadcast_to(r, (len(r), days)).astype(np.float32) for r in per_channel]
        moved = move * per_channel[store] * after
        out[store] = out[store] - moved
        out[app] = out[app] + moved
        return out

    app_b, store_b = BROWSE_CHANNELS.index("app"), BROWSE_CHANNELS.index("store")
    app_p, store_p = BUY_CHANNELS.index("app"), BUY_CHANNELS.index("store")
    buy = to_app(rates.buy, store_p, app_p)
    # Web research then a store purchase: the moved share becomes an app purchase.
    moved = move * rates.web_to_store * after
    buy[app_p] = buy[app_p] + moved
    return _BlockRates(
        browse=to_app(rates.browse, store_b, app_b),
        buy=[rate * factor for rate in buy],
        intent_buy=to_app(rates.intent_buy, store_p, app_p),
        base_total=rates.base_total * factor,
        web_to_store=(rates.web_to_store - moved) * factor,
        cart_recovery=rates.cart_recovery * factor,
    )


def _simulate_block(
    rng: np.random.Generator,
    pop: _Population,
    lo: int,
    hi: int,
    cal: _Calendar,
    att: _Attitudes,
    sink: _Sink,
    drift_day: int | None = None,
    donor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Latent state, truth and events of customers ``lo..hi``; returns (p_purchase, p_active).

    ``drift_day`` (a day index) switches on the drift scenario from that day on, ``donor``
    (:func:`_purchase_donors`) saying whose purchase rates each customer then has: see
    :func:`_drifted_rates`.
    """
    B, D = hi - lo, cal.days
    sl = slice(lo, hi)
    rates = _block_rates(pop, sl)
    if drift_day is not None:
        rates = _drifted_rates(pop, sl, rates, D, drift_day, donor)
    dd = np.arange(D, dtype=np.float32)[None, :]
    signup = pop.signup[sl, None]
    alive = (dd >= signup) & (dd < pop.churn[sl, None])
    f32 = np.float32
    progress = _drift_progress(pop.onset[sl, None].astype(f32), pop.tau[sl, None].astype(f32), dd)

    # Latent activity: AR(1) drift x drift-away decay, zero outside the customer's lifetime.
    eps = rng.standard_normal((B, D), dtype=np.float32)
    z0 = rng.standard_normal(B) * AR_SD
    noise = AR_SD * np.sqrt(1 - AR_RHO**2)
    z = lfilter([noise], [1.0, -AR_RHO], eps, axis=1, zi=(AR_RHO * z0)[:, None])[0].astype(f32)
    level = np.exp(z - f32(AR_SD**2 / 2) - progress) * alive
    is_new = (pop.arch[sl] == _NEW)[:, None]
    since = np.maximum(dd - signup, 0)
    explore = np.where(is_new, 1 + f32(EXPLORE_BOOST) * np.exp(-since / f32(EXPLORE_DAYS)), 1)
    browse_level = level * explore.astype(f32)

    starts = rng.random((B, D), dtype=np.float32) < pop.intent_rate[sl, None]
    cumulative = np.cumsum(starts, axis=1, dtype=np.int16)
    research = _window_any(cumulative, *RESEARCH_DAYS)
    buying = _window_any(cumulative, *BUYING_DAYS).astype(np.float32)

    # Browsing units (web and app sessions, social and store events): one Poisson count per
    # cell, split over channels by their unit rates afterwards.
    mu = [
        rates.browse[k]
        / (SESSION_EVENTS if ch in ("web", "app") else 1)
        * browse_level
        * _dow_matrix(cal, ch)
        * (1 + K_RESEARCH * pop.research[sl, k, None] * research)
        for k, ch in enumerate(BROWSE_CHANNELS)
    ]
    mu_browse = mu[0] + mu[1] + mu[2] + mu[3]

    # Purchases: a rate per ordering channel (raised on intent buying days) and two same-day
    # cross-channel journeys: web research then a store purchase, an app cart saved by an SMS.
    base_total = rates.base_total
    rho = [
        level
        * _dow_matrix(cal, ch)
        * (rates.buy[k] + K_BUY * buying * rates.intent_buy[k] * base_total)
        for k, ch in enumerate(BUY_CHANNELS)
    ]
    boost = 1 + K_BUY * buying
    rho.append(rates.web_to_store * level * _dow_matrix(cal, "store") * boost)
    rho.append(rates.cart_recovery * level * _dow_matrix(cal, "app") * boost)
    p_base = -np.expm1(-sum(rho[1:], rho[0]))

    s_day = _dissatisfaction(pop.s0[sl, None].astype(f32), progress)
    p_support = np.where(alive, _support_probability(pop.support[sl, None].astype(f32), s_day), 0)

    # Marketing sends and responses; an email click may lead to a purchase the same day.
    log_no_purchase = np.zeros(B * D)
    log_no_response = np.zeros(B * D)
    responded_cells: list[np.ndarray] = []
    email_buys: list[tuple[np.ndarray, ...]] = []
    for kind, (channel, send_type, _, _, hour) in CAMPAIGNS.items():
        c, d, code = _recipients(pop, kind, lo, hi, cal)
        if c.size == 0:
            continue
        g = c + lo
        cell = c * D + d
        spread = 3600 if channel == "email" else 900
        t_send = hour * 3600 + rng.integers(0, spread, size=c.size)
        sink.add(g, _at(d, t_send), _CH[channel], _ET[send_type], campaign=code)
        resp = np.sqrt(np.clip(level.ravel()[cell], 0, 1.5))
        u = rng.random(c.size)
        if channel == "email":
            lift = pop.email_research[g] * research.ravel()[cell]
            p_resp = np.minimum(0.97, pop.email_open[g] * resp * (1 + lift))
            p_click = p_resp * np.minimum(0.9, pop.email_click[g] * (1 + 0.5 * lift))
            opened, clicked = u < p_resp, u < p_click
            t_open = t_send + rng.exponential(2.5 * 3600, size=c.size).astype(np.int64)
            t_click = t_open + rng.integers(10, 300, size=c.size)
            o, k = np.flatnonzero(opened), np.flatnonzero(clicked)
            sink.add(
                g[o],
                _at(d[o], t_open[o]),
                _CH["email"],
                _ET["email_open"],
                device=_devices(rng, pop.device[g[o]], False),
                campaign=code[o],
            )
            sink.add(
                g[k],
                _at(d[k], t_click[k]),
                _CH["email"],
                _ET["email_click"],
                device=_devices(rng, pop.device[g[k]], False),
                campaign=code[k],
            )
            email_buy = pop.email_buy[g]
            if drift_day is not None:
                email_buy = np.where(d >= drift_day, pop.email_buy[donor[g]], email_buy)
                email_buy = email_buy * _drift_purchase_factor(pop.arch[g], d, drift_day)
            buys = k[rng.random(k.size) < email_buy[k]]
            email_buys.append((g[buys], d[buys], t_click[buys]))
            p_buy = p_click * email_buy
            log_no_purchase += np.bincount(cell, np.log1p(-p_buy), minlength=B * D)
        else:
            rate = pop.push_open if kind == "push" else pop.sms_click
            p_resp = np.minimum(0.97, rate[g] * resp)
            o = np.flatnonzero(u < p_resp)
            delay = rng.exponential(3600 if kind == "push" else 1800, size=o.size)
            rtype = _ET["push_open"] if kind == "push" else _ET["sms_click"]
            sink.add(
                g[o],
                _at(d[o], t_send[o] + delay.astype(np.int64)),
                _CH[channel],
                rtype,
                device=_devices(rng, pop.device[g[o]], True),
                campaign=code[o],
            )
        responded_cells.append(cell[o])
        log_no_response += np.bincount(cell, np.log1p(-p_resp), minlength=B * D)

    shape = (B, D)
    no_base = 1 - p_base
    p_purchase = 1 - no_base * np.exp(log_no_purchase).reshape(shape)
    p_active = 1 - no_base * np.exp(-mu_browse) * (1 - p_support) * np.exp(log_no_response).reshape(
        shape
    )

    # Realised browsing, base purchases and email-driven purchases.
    n_browse = rng.poisson(mu_browse)
    _emit_browsing(rng, pop, lo, mu, n_browse, sink)
    bought = rng.random(shape, dtype=np.float32) < p_base
    bc, bd = np.nonzero(bought)
    route = _categorical_rows(rng, np.stack([r[bc, bd] for r in rho], axis=1))
    orders = [_emit_purchases(rng, pop, bc + lo, bd, route, sink)]
    for g, d, t_click in email_buys:
        orders.append(_emit_email_purchases(rng, pop, g, d, t_click, sink))

    in_block = np.flatnonzero((att.cust >= lo) & (att.cust < hi))
    _emit_attitudes(rng, pop, att, in_block, sink)

    # Returns and reviews land on later days that are active anyway, keeping p_active exact.
    active = n_browse > 0
    active |= bought
    flat = active.ravel()
    for cells in responded_cells:
        flat[cells] = True
    active[att.cust[in_block] - lo, att.day[in_block]] = True
    _emit_after_sales(rng, pop, lo, active, orders, progress, sink)
    return p_purchase.astype(np.float32), p_active.astype(np.float32)


def _recipients(
    pop: _Population, kind: str, lo: int, hi: int, cal: _Calendar
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local customer, day, campaign code) of every send of a campaign kind in the block."""
    days, codes = cal.campaign_days[kind], cal.campaign_codes[kind]
    wanted = pop.subscribed[kind][lo:hi, None] & (days[None, :] >= pop.signup[lo:hi, None])
    c, j = np.nonzero(wanted)
    return c, days[j], codes[j]


def _emit_browsing(
    rng: np.random.Generator,
    pop: _Population,
    lo: int,
    units: list[np.ndarray],
    counts: np.ndarray,
    sink: _Sink,
) -> None:
    """Browsing: each unit is a web or app session of several events, or one social or store
    event; its channel is drawn by the channels' unit rates, each event's type by channel."""
    D = counts.shape[1]
    flat = counts.ravel()
    cells = np.flatnonzero(flat)
    unit_cell = np.repeat(cells, flat[cells])
    if unit_cell.size == 0:
        return
    unit_channel = _categorical_rows(rng, np.stack([u.ravel()[unit_cell] for u in units], 1))
    in_session = unit_channel <= 1  # web and app, the first two BROWSE_CHANNELS
    size = np.ones(unit_cell.size, dtype=np.int64)
    size[in_session] += rng.poisson(SESSION_EVENTS - 1, size=int(in_session.sum()))
    unit_session = np.full(unit_cell.size, -1, dtype=np.int64)
    unit_session[in_session] = sink.new_sessions(int(in_session.sum()))
    unit_start = np.empty(unit_cell.size, dtype=np.int64)
    for k, name in enumerate(BROWSE_CHANNELS):
        sel = np.flatnonzero(unit_channel == k)
        unit_start[sel] = _seconds_in_day(rng, name, sel.size)
    unit_step = rng.integers(30, 200, size=unit_cell.size)

    unit = np.repeat(np.arange(unit_cell.size), size)
    rank = np.arange(unit.size) - np.repeat(np.cumsum(size) - size, size)
    seconds = unit_start[unit] + rank * unit_step[unit]
    channel = unit_channel[unit]
    g = (unit_cell[unit] // D + lo).astype(np.int32)
    day = unit_cell[unit] % D
    session = unit_session[unit]
    etype = np.empty(unit.size, dtype=np.int8)
    for k, name in enumerate(BROWSE_CHANNELS):
        sel = np.flatnonzero(channel == k)
        types, shares = zip(*_BROWSE_TYPES[name], strict=True)
        codes = np.array([_ET[t] for t in types], dtype=np.int8)
        etype[sel] = codes[rng.choice(len(types), size=sel.size, p=np.array(shares))]
        device = None
        if name in ("web", "app", "social"):
            device = _devices(rng, pop.device[g[sel]], name == "app")
        sink.add(
            g[sel],
            _at(day[sel], seconds[sel]),
            _CH[name],
            etype[sel],
            session=session[sel] if name in ("web", "app") else None,
            device=device,
        )
    # An ad click answers an impression shown moments before.
    ads = np.flatnonzero(etype == _ET["ad_click"])
    sink.add(
        g[ads],
        _at(day[ads], seconds[ads] - rng.integers(2, 30, size=ads.size)),
        _CH["social"],
        _ET["ad_impression"],
        device=_devices(rng, pop.device[g[ads]], False),
    )
    # Abandoned app carts trigger a reminder SMS for opted-in customers; some are clicked.
    carts = np.flatnonzero((etype == _ET["add_to_cart"]) & (channel == 1))
    carts = carts[np.unique(session[carts], return_index=True)[1]]  # one reminder per session
    carts = carts[pop.sms_opt[g[carts]] & (rng.random(carts.size) < ABANDONED_CART_SMS)]
    t_sms = seconds[carts] + rng.integers(1800, 5400, size=carts.size)
    sink.add(g[carts], _at(day[carts], t_sms), _CH["sms"], _ET["sms_send"], campaign=0)
    clicked = rng.random(carts.size) < 0.5 * pop.sms_click[g[carts]]
    c = carts[clicked]
    t_click = t_sms[clicked] + rng.exponential(1800, size=c.size).astype(np.int64)
    sink.add(
        g[c],
        _at(day[c], t_click),
        _CH["sms"],
        _ET["sms_click"],
        device=_devices(rng, pop.device[g[c]], True),
        campaign=0,
    )


def _amounts(rng: np.random.Generator, pop: _Population, g: np.ndarray) -> np.ndarray:
    raw = np.exp(pop.amount_mu[g] + pop.amount_sigma[g] * rng.standard_normal(g.size))
    return np.maximum(np.round(raw, 2), 1.0)


def _online_order(rng, pop, g, day, t_buy, channel: str, sink: _Sink) -> tuple[np.ndarray, ...]:
    """A web or app checkout session: an add to cart, then the purchase (added by the caller)."""
    ids = sink.new_sessions(g.size)
    dev = _devices(rng, pop.device[g], channel == "app")
    t_cart = t_buy - rng.integers(20, 300, size=g.size)
    sink.add(g, _at(day, t_cart), _CH[channel], _ET["add_to_cart"], session=ids, device=dev)
    return ids, dev


def _emit_purchases(
    rng: np.random.Generator,
    pop: _Population,
    g: np.ndarray,
    day: np.ndarray,
    route: np.ndarray,
    sink: _Sink,
) -> tuple[np.ndarray, ...]:
    """Base purchases by route: web, app, store, call centre, web-to-store, SMS-saved cart.

    Returns (customer, day, time, channel, amount) of each purchase for returns and reviews.
    """
    amount = _amounts(rng, pop, g)
    t_buy = np.zeros(g.size, dtype=np.int64)
    channel = np.zeros(g.size, dtype=np.int8)
    for r, name in enumerate(BUY_CHANNELS):
        sel = np.flatnonzero(route == r)
        t = np.maximum(_seconds_in_day(rng, name, sel.size), 1200)
        t_buy[sel], channel[sel] = t, _CH[name]
        session = device = None
        if name in ("web", "app"):
            session, device = _online_order(rng, pop, g[sel], day[sel], t, name, sink)
        elif name == "store":
            t_visit = t - rng.integers(300, 2400, size=sel.size)
            sink.add(g[sel], _at(day[sel], t_visit), _CH["store"], _ET["store_visit"])
        sink.add(
            g[sel],
            _at(day[sel], t),
            _CH[name],
            _ET["purchase"],
            amount=amount[sel],
            session=session,
            device=device,
        )

    # Web research in the morning, then the purchase in a store a few hours later.
    sel = np.flatnonzero(route == 4)
    gs, ds = g[sel], day[sel]
    t_web = rng.integers(7 * 3600, 15 * 3600, size=sel.size)
    ids = sink.new_sessions(sel.size)
    dev = _devices(rng, pop.device[gs], False)
    sink.add(gs, _at(ds, t_web), _CH["web"], _ET["page_view"], session=ids, device=dev)
    t_view = t_web + rng.integers(20, 240, size=sel.size)
    sink.add(gs, _at(ds, t_view), _CH["web"], _ET["product_view"], session=ids, device=dev)
    t = t_view + rng.integers(3600, 6 * 3600, size=sel.size)
    sink.add(
        gs, _at(ds, t - rng.integers(300, 1800, size=sel.size)), _CH["store"], _ET["store_visit"]
    )
    sink.add(gs, _at(ds, t), _CH["store"], _ET["purchase"], amount=amount[sel])
    t_buy[sel], channel[sel] = t, _CH["store"]

    # An app cart left behind, a reminder SMS, a click, and the purchase in the app.
    sel = np.flatnonzero(route == 5)
    gs, ds = g[sel], day[sel]
    t_cart = rng.integers(7 * 3600, 15 * 3600, size=sel.size)
    ids = sink.new_sessions(sel.size)
    dev = _devices(rng, pop.device[gs], True)
    t_view = t_cart - rng.integers(60, 300, size=sel.size)
    sink.add(gs, _at(ds, t_view), _CH["app"], _ET["product_view"], session=ids, device=dev)
    sink.add(gs, _at(ds, t_cart), _CH["app"], _ET["add_to_cart"], session=ids, device=dev)
    t_sms = t_cart + rng.integers(1800, 5400, size=sel.size)
    sink.add(gs, _at(ds, t_sms), _CH["sms"], _ET["sms_send"], campaign=0)
    t_click = t_sms + rng.integers(120, 3600, size=sel.size)
    sink.add(gs, _at(ds, t_click), _CH["sms"], _ET["sms_click"], device=dev, campaign=0)
    t = t_click + rng.integers(180, 1200, size=sel.size)
    ids = sink.new_sessions(sel.size)
    sink.add(
        gs, _at(ds, t), _CH["app"], _ET["purchase"], amount=amount[sel], session=ids, device=dev
    )
    t_buy[sel], channel[sel] = t, _CH["app"]
    return g, day, np.clip(t_buy, 0, 86_399), channel, amount


def _emit_email_purchases(
    rng: np.random.Generator,
    pop: _Population,
    g: np.ndarray,
    day: np.ndarray,
    t_click: np.ndarray,
    sink: _Sink,
) -> tuple[np.ndarray, ...]:
    """Purchases right after an email click, mostly in the app for deal seekers."""
    amount = _amounts(rng, pop, g)
    in_app = rng.random(g.size) < pop.email_buy_app[g]
    t_buy = np.clip(t_click + rng.integers(360, 2700, size=g.size), 0, 86_399)
    channel = np.where(in_app, _CH["app"], _CH["web"]).astype(np.int8)
    for name, sel in (("app", np.flatnonzero(in_app)), ("web", np.flatnonzero(~in_app))):
        ids, dev = _online_order(rng, pop, g[sel], day[sel], t_buy[sel], name, sink)
        sink.add(
            g[sel],
            _at(day[sel], t_buy[sel]),
            _CH[name],
            _ET["purchase"],
            amount=amount[sel],
            session=ids,
            device=dev,
        )
    return g, day, t_buy, channel, amount


def _emit_attitudes(
    rng: np.random.Generator,
    pop: _Population,
    att: _Attitudes,
    rows: np.ndarray,
    sink: _Sink,
) -> None:
    """Support contacts and complaints of the block, each on a channel, and rated surveys."""
    g, day = att.cust[rows], att.day[rows]
    complaint = att.complaint[rows]
    # support: call centre, email, web chat, app chat; complaints: call centre, social, email
    support_ch = np.array([_CH["call_center"], _CH["email"], _CH["web"], _CH["app"]])
    complaint_ch = np.array([_CH["call_center"], _CH["social"], _CH["email"], _CH["email"]])
    pick = rng.choice(4, size=g.size, p=[0.6, 0.15, 0.15, 0.1])
    pick = np.where((pick == 3) & ~pop.app_user[g], 2, pick)
    channel = np.where(complaint, complaint_ch[pick], support_ch[pick]).astype(np.int8)
    etype = np.where(complaint, _ET["complaint"], _ET["support_contact"]).astype(np.int8)
    seconds = _seconds_in_day(rng, "call_center", g.size)
    digital = np.isin(channel, [_CH["web"], _CH["app"], _CH["email"], _CH["social"]])
    device = np.where(digital, _devices(rng, pop.device[g], False), -1)
    online = np.isin(channel, [_CH["web"], _CH["app"]])
    session = np.full(g.size, -1, dtype=np.int64)
    session[online] = sink.new_sessions(int(online.sum()))
    sink.add(g, _at(day, seconds), channel, etype, session=session, device=device)
    rated = np.flatnonzero(~np.isnan(att.survey_rating[rows]))
    t_survey = seconds[rated] + rng.integers(3600, 6 * 3600, size=rated.size)
    sink.add(
        g[rated],
        _at(day[rated], t_survey),
        _CH["email"],
        _ET["survey_response"],
        device=_devices(rng, pop.device[g[rated]], False),
        rating=att.survey_rating[rows][rated],
    )


def _emit_after_sales(
    rng: np.random.Generator,
    pop: _Population,
    lo: int,
    active: np.ndarray,
    orders: list[tuple[np.ndarray, ...]],
    progress: np.ndarray,
    sink: _Sink,
) -> None:
    """Returns (refunds of earlier purchases) and rated reviews, on later active days."""
    B, D = active.shape
    g, day, _, channel, amount = (np.concatenate(c) for c in zip(*orders, strict=True))
    if g.size == 0:
        return
    next_active = np.where(active, np.arange(D), D)
    next_active = np.minimum.accumulate(next_active[:, ::-1], axis=1)[:, ::-1]

    def later_active_day(chosen: np.ndarray, lag_lo: int, lag_hi: int) -> np.ndarray:
        target = day[chosen] + rng.integers(lag_lo, lag_hi, size=chosen.size)
        inside = target < D
        found = np.full(chosen.size, D)
        found[inside] = next_active[g[chosen][inside] - lo, target[inside]]
        return np.where(found < np.minimum(D, day[chosen] + 30), found, -1)

    chosen = np.flatnonzero(rng.random(g.size) < pop.return_rate[g])
    when = later_active_day(chosen, 1, 15)
    chosen, when = chosen[when >= 0], when[when >= 0]
    full = rng.random(chosen.size) < 0.7
    refund = np.round(amount[chosen] * np.where(full, 1.0, rng.uniform(0.3, 0.9, chosen.size)), 2)
    ch = channel[chosen]
    seconds = np.empty(chosen.size, dtype=np.int64)
    for name in BUY_CHANNELS:
        sel = ch == _CH[name]
        seconds[sel] = _seconds_in_day(rng, name, int(sel.sum()))
    online = np.isin(ch, [_CH["web"], _CH["app"]])
    session = np.full(chosen.size, -1, dtype=np.int64)
    session[online] = sink.new_sessions(int(online.sum()))
    device = np.where(online, _devices(rng, pop.device[g[chosen]], False), -1)
    device = np.where(ch == _CH["app"], _devices(rng, pop.device[g[chosen]], True), device)
    sink.add(
        g[chosen],
        _at(when, seconds),
        ch,
        _ET["return"],
        amount=np.maximum(refund, 0.01),
        session=session,
        device=device,
    )

    chosen = np.flatnonzero(rng.random(g.size) < pop.review_rate[g])
    when = later_active_day(chosen, 2, 12)
    chosen, when = chosen[when >= 0], when[when >= 0]
    gc = g[chosen]
    in_app = pop.app_user[gc] & (rng.random(chosen.size) < 0.5)
    ch = np.where(in_app, _CH["app"], _CH["web"]).astype(np.int8)
    s = _dissatisfaction(pop.s0[gc], progress[gc - lo, when])
    device = np.where(
        in_app, _devices(rng, pop.device[gc], True), _devices(rng, pop.device[gc], False)
    )
    sink.add(
        gc,
        _at(when, _seconds_in_day(rng, "web", chosen.size)),
        ch,
        _ET["review"],
        session=sink.new_sessions(chosen.size),
        device=device,
        rating=_ratings(rng, s),
    )


# --------------------------------------------------------------------------------------------
# Assembly into frames
# --------------------------------------------------------------------------------------------


def _session_names(first: int, stop: int, seed: int) -> np.ndarray:
    """Opaque ids of sessions ``first..stop``: 16 hex digits (bytes) of a bijective mix of
    the session number and the seed, so distinct sessions never share an id."""
    x = np.arange(first, stop, dtype=np.uint64)
    x += np.full(1, seed % 2**32, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    pairs = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")
    return pairs[x.astype(">u8").view(np.uint8).reshape(-1, 8)].view("S16").ravel()


def _fixed_width_strings(values: np.ndarray, codes: np.ndarray) -> pa.Array:
    """Arrow strings ``values[codes]`` (null where code < 0) for fixed-width ASCII values."""
    width = values.dtype.itemsize
    data = np.ascontiguousarray(values[np.maximum(codes, 0)])
    offsets = np.arange(len(codes) + 1, dtype=np.int32) * np.int32(width)
    valid = codes >= 0
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        pa.string(), len(codes), [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _take(values, codes: np.ndarray) -> pa.Array:
    return pc.take(pa.array(values, pa.string()), pa.array(codes, mask=codes < 0))


def _events_table(
    columns: list[np.ndarray],
    ids: np.ndarray,
    sessions: np.ndarray,
    cal: _Calendar,
    *,
    distinct_repeats: bool = False,
) -> pa.Table:
    """Canonical events of one block, with content-hash event ids.

    ``columns[0]`` holds customer codes into ``ids`` and ``columns[5]`` session codes into
    ``sessions`` (the block's own, so that only the block's strings are hashed).
    ``distinct_repeats`` gives rows of identical content distinct ids (see
    :func:`data_layer.schema.ranked_repeats`, the rule ingest applies); the omnichannel world
    never repeats content, so it does not ask.
    """
    cust, t_us, channel, etype, amount, session, device, rating, campaign = columns
    start_us = cal.start.value // 1000
    hashes = event_id_hashes_from_codes(
        {
            "customer_id": (cust, ids),
            "event_timestamp": (start_us + t_us) * 1000,
            "channel": (channel, CHANNELS),
            "event_type": (etype, list(EVENT_TYPES)),
            "amount": amount,
            "session_id": (session, sessions.astype(str)),
            "device": (device, DEVICES),
            "rating": rating,
            "campaign_id": (campaign, cal.campaign_names),
        }
    )
    if distinct_repeats:
        hashes = ranked_repeats(hashes)
    columns = {
        "event_id": event_id_array(hashes),
        "customer_id": _fixed_width_strings(ids.astype(bytes), cust),
        "event_timestamp": pa.array(start_us + t_us, pa.timestamp("us", tz="UTC")),
        "channel": _take(CHANNELS, channel),
        "event_type": _take(list(EVENT_TYPES), etype),
        "family": _take(_FAMILY_OF_TYPE, etype),
        "amount": pa.array(amount, pa.float64(), from_pandas=True),
        "session_id": _fixed_width_strings(sessions, session),
        "device": _take(DEVICES, device),
        "rating": pa.array(rating, pa.float64(), from_pandas=True),
        "campaign_id": _take(cal.campaign_names, campaign),
    }
    return pa.table(columns, schema=EVENT_SCHEMA)


def _days_after(start: pd.Timestamp, days: np.ndarray) -> pd.DatetimeIndex:
    """``start`` plus fractional ``days``; NaT where a day is NaN (no such event)."""
    days = np.asarray(days, dtype=np.float64)
    finite = np.isfinite(days)
    # pandas multiplies NaN's integer cast by the unit before masking it, which overflows and
    # warns: convert only real days.
    return (start + pd.to_timedelta(np.where(finite, days, 0.0), unit="D")).where(finite)


def _customers_frame(pop: _Population, ids: np.ndarray, start: pd.Timestamp) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ids,
            "signup_date": _days_after(start, pop.signup),
            "region": np.array(REGIONS, dtype=object)[pop.region],
            "age_band": np.array(AGE_BANDS, dtype=object)[pop.age],
            "loyalty_tier": np.array(LOYALTY_TIERS, dtype=object)[pop.tier],
            "preferred_device": np.array(DEVICES, dtype=object)[pop.device],
        }
    )


def _truth_customers(
    pop: _Population, ids: np.ndarray, start: pd.Timestamp, days: int
) -> pd.DataFrame:
    churn = np.where(pop.churn < days, pop.churn, np.nan)
    onset = np.where(pop.onset < days, pop.onset, np.nan)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "archetype": np.array(ARCHETYPE_NAMES, dtype=object)[pop.arch],
            "archetype_id": pop.arch.astype(np.int64),
            "signup_date": _days_after(start, pop.signup),
            "churn_date": _days_after(start, churn),
            "drift_start": _days_after(start, onset).round("s"),
        }
    )


def _truth_daily(
    ids: np.ndarray, start: pd.Timestamp, p_purchase: np.ndarray, p_active: np.ndarray
) -> pd.DataFrame:
    n, days = p_purchase.shape
    day_ns = start.value + np.arange(days, dtype=np.int64) * (DAY_US * 1000)
    return pd.DataFrame(
        {
            "customer_id": pd.Categorical.from_codes(
                np.repeat(np.arange(n, dtype=np.int32), days), categories=pd.Index(ids)
            ),
            "date": pd.DatetimeIndex(np.tile(day_ns, n), tz="UTC"),
            "p_purchase": p_purchase.ravel(),
            "p_active": p_active.ravel(),
        }
    )


# --------------------------------------------------------------------------------------------
# The sparse retail world: purchases only, on one channel, a few a year
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseArchetype:
    """One latent buyer type of the sparse retail world.

    While alive, a customer's purchases form a renewal process on the customer's own shopping
    clock, which runs at ``purchases_per_year`` x a customer multiplier x the season: the gaps
    are Gamma(regularity, 1 / regularity) on that clock (mean one gap), so regularity 1 is a
    memoryless (Poisson) buyer and larger values buy on a cycle, like a replenisher. After each
    purchase, the first one included, the customer leaves for good with probability around
    ``dropout``. Neither the cycle nor the season nor a drop-out at the first purchase is in
    the BG/NBD model, so a model that learns them has something to beat it with.
    """

    name: str
    share: float
    purchases_per_year: float
    rate_shape: float  # Gamma shape of the customer's rate multiplier (mean 1)
    regularity: float
    dropout: float
    season: float  # extra rate in the holiday weeks, as a multiple of the base rate
    amount_median: float
    amount_sigma: float


SPARSE_ARCHETYPES: tuple[SparseArchetype, ...] = (
    SparseArchetype("one_timer", 0.35, 1.0, 2.0, 1.0, 0.75, 0.5, 35, 0.6),
    SparseArchetype("occasional", 0.30, 2.5, 2.0, 1.0, 0.15, 0.5, 45, 0.6),
    SparseArchetype("replenisher", 0.15, 6.0, 6.0, 5.0, 0.06, 0.0, 30, 0.3),
    SparseArchetype("holiday_gifter", 0.12, 1.5, 3.0, 1.0, 0.10, 6.0, 80, 0.5),
    SparseArchetype("loyal_regular", 0.08, 14.0, 3.0, 2.0, 0.02, 0.3, 55, 0.5),
)
"""The sparse world's buyer types, with shares that sum to 1: most customers buy one to three
times in a few years, a few buy monthly."""
SPARSE_ARCHETYPE_NAMES: tuple[str, ...] = tuple(a.name for a in SPARSE_ARCHETYPES)

SPARSE_CHANNEL = "store"
"""The sparse world's only channel (``generate_sparse_retail`` also takes ``web``)."""
SPARSE_DEFAULT_DAYS = 1095
"""Three years: the history a sparse buyer needs before its rhythm shows."""
HOLIDAY_WEEKS = ((11, 15), (12, 24))
"""(month, day) of the first and last day of the holiday season, both included."""
ACQUISITION_SEASON = 1.0
"""Extra first purchases in the holiday weeks, as a multiple of the usual daily rate."""
DROPOUT_CONCENTRATION = 8.0
"""Beta concentration of customers' drop-out probabilities around their type's."""
ZERO_ORDER_SHARE = 0.002
"""Share of orders with amount 0 (vouchers, replacements): real, and kept."""
REPEAT_LINE_SHARE = 0.004
"""Share of order lines followed by an identical line (same customer, day, amount): two
genuine purchases that a content-only event id would merge."""


def generate_sparse_retail(
    n_customers: int,
    days: int,
    seed: int,
    end: pd.Timestamp | None = None,
    *,
    channel: str = SPARSE_CHANNEL,
) -> GeneratedData:
    """A purchase-only log of ``n_customers`` sparse buyers over ``days`` days ending at ``end``.

    Like a retail export: one channel, purchases only, dated by day (midnight UTC), amounts
    that include some $0 orders, and some identical lines (the same customer, day and amount)
    that are two genuine purchases each; the event ids keep them apart (the k-th repeat of a
    line's content gets the content hash combined with k). The customers table holds only
    ``signup_date`` (the first purchase day): a purchase log has no profile.

    Ground truth: the archetypes (:data:`SPARSE_ARCHETYPES`), each customer's drop-out day
    (``churn_date``, the day after the purchase at which they left), and for every customer-day
    ``p_purchase``, the exact probability of at least one purchase that day given the latent
    state at its start (``p_active`` equals it: buying is the only logged action). Pure and
    deterministic, vectorised over blocks of customers like :func:`generate`.
    """
    if channel not in ("store", "web"):
        raise ValueError(f"the sparse retail world sells on store or web, not {channel!r}")
    if n_customers < 1 or days < 1:
        raise ValueError(f"need n_customers >= 1 and days >= 1, got {n_customers}, {days}")
    end_ts = _utc_midnight(DEFAULT_END if end is None else end)
    start = end_ts - pd.Timedelta(days=days)
    pop_seq, block_seq = np.random.SeedSequence([seed, n_customers, days, 1]).spawn(2)
    rng = np.random.default_rng(pop_seq)

    shares = np.array([a.share for a in SPARSE_ARCHETYPES])
    counts = np.floor(shares * n_customers).astype(int)
    counts[np.argsort(-(shares * n_customers - counts))[: n_customers - counts.sum()]] += 1
    arch = rng.permutation(np.repeat(np.arange(len(SPARSE_ARCHETYPES)), counts)).astype(np.int8)

    def param(name: str) -> np.ndarray:
        return np.array([getattr(a, name) for a in SPARSE_ARCHETYPES], dtype=np.float64)[arch]

    holiday = _holiday_days(start, days)
    # The first purchase: any day of the period, more often in the holiday weeks.
    weights = np.cumsum(1 + ACQUISITION_SEASON * holiday)
    first = np.searchsorted(weights, rng.random(n_customers) * weights[-1], side="right")
    shape = param("rate_shape")
    rate = param("purchases_per_year") / 365.25 * rng.gamma(shape, 1 / shape)
    dropout = _beta_around(rng, param("dropout"), DROPOUT_CONCENTRATION)
    amount_mu = np.log(param("amount_median")) + rng.normal(0, 0.35, size=n_customers)

    # Each type's shopping clock: cumulative season x weekday pattern, mean 1 per day over a
    # year, so that purchases_per_year holds on average.
    weekday = np.array(_DOW[channel], dtype=np.float64)
    weekday = (weekday / weekday.mean())[(start.dayofweek + np.arange(days)) % 7]
    clocks = np.zeros((len(SPARSE_ARCHETYPES), days + 1))
    holiday_share = _holiday_share()
    for k, a in enumerate(SPARSE_ARCHETYPES):
        speed = weekday * (1 + a.season * holiday) / (1 + a.season * holiday_share)
        clocks[k, 1:] = np.cumsum(speed)

    ids = _customer_ids(n_customers)
    p_purchase = np.zeros((n_customers, days), dtype=np.float32)
    churn = np.full(n_customers, days, dtype=np.int64)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    n_blocks = -(-n_customers // BLOCK_CUSTOMERS)
    for block, child in zip(range(n_blocks), block_seq.spawn(n_blocks), strict=True):
        lo, hi = block * BLOCK_CUSTOMERS, min(n_customers, (block + 1) * BLOCK_CUSTOMERS)
        block_rng = np.random.default_rng(child)
        cust, day, clock, churn[lo:hi] = _sparse_purchases(
            block_rng, arch[lo:hi], rate[lo:hi], first[lo:hi], dropout[lo:hi], clocks
        )
        p_purchase[lo:hi] = _sparse_truth(
            arch[lo:hi], rate[lo:hi], first[lo:hi], churn[lo:hi], cust, day, clock, clocks
        )
        parts.append((cust + lo, day))

    cust, day = (np.concatenate(c) for c in zip(*parts, strict=True))
    noise = param("amount_sigma")[cust] * rng.standard_normal(cust.size)
    amount = np.maximum(np.round(np.exp(amount_mu[cust] + noise), 2), 1.0)
    amount[rng.random(cust.size) < ZERO_ORDER_SHARE] = 0.0
    # An identical second line right after some lines: two genuine purchases of one content.
    line = np.repeat(np.arange(cust.size), 1 + (rng.random(cust.size) < REPEAT_LINE_SHARE))
    cust, day, amount = cust[line], day[line], amount[line]
    order = np.lexsort((day, cust))
    cust, day, amount = cust[order], day[order], amount[order]

    size = cust.size
    none = np.full(size, -1, dtype=np.int64)
    columns = [
        cust.astype(np.int32),
        day.astype(np.int64) * DAY_US,
        np.full(size, _CH[channel], dtype=np.int8),
        np.full(size, _ET["purchase"], dtype=np.int8),
        amount,
        none,
        none.astype(np.int8),
        np.full(size, np.nan),
        none.astype(np.int32),
    ]
    no_sessions = np.array([b"0" * 16], dtype="S16")  # every session code is -1 (absent)
    events = _events_table(columns, ids, no_sessions, _calendar(start, days), distinct_repeats=True)
    churn_days = np.where(churn < days, churn, np.nan)
    truth_customers = pd.DataFrame(
        {
            "customer_id": ids,
            "archetype": np.array(SPARSE_ARCHETYPE_NAMES, dtype=object)[arch],
            "archetype_id": arch.astype(np.int64),
            "signup_date": _days_after(start, first),
            "churn_date": _days_after(start, churn_days),
            "drift_start": pd.Series(pd.NaT, index=range(n_customers), dtype="datetime64[ns, UTC]"),
        }
    )
    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "signup_date": _days_after(start, first),
            **{name: None for name in ("region", "age_band", "loyalty_tier", "preferred_device")},
        }
    )
    return GeneratedData(
        events=events,
        customers=customers,
        truth_customers=truth_customers,
        truth_daily=_truth_daily(ids, start, p_purchase, p_purchase.copy()),
        scenario={"profile": "sparse-retail", "channel": channel},
    )


def _holiday_days(start: pd.Timestamp, days: int) -> np.ndarray:
    """1.0 on the days of the period inside the holiday weeks, else 0.0."""
    dates = pd.date_range(start, periods=days, freq="D")
    key = dates.month * 100 + dates.day
    (m0, d0), (m1, d1) = HOLIDAY_WEEKS
    return np.asarray((key >= m0 * 100 + d0) & (key <= m1 * 100 + d1), dtype=np.float64)


def _holiday_share() -> float:
    """Share of a (non-leap) year's days inside the holiday weeks."""
    year = pd.Timestamp("2025-01-01", tz="UTC")
    return float(_holiday_days(year, 365).mean())


def _sparse_purchases(
    rng: np.random.Generator,
    arch: np.ndarray,
    rate: np.ndarray,
    first: np.ndarray,
    dropout: np.ndarray,
    clocks: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every purchase of one block: (customer, day, shopping-clock time) and each customer's
    drop-out day (the day after the purchase they left at; ``days`` if they never left).

    One step per purchase number, vectorised over the customers still buying.
    """
    n, days = len(arch), clocks.shape[1] - 1
    regularity = np.array([a.regularity for a in SPARSE_ARCHETYPES])[arch]
    own_clock = clocks[arch]  # (n, days + 1): each customer's type clock
    # The first purchase at a uniform moment of its day, on the customer's clock.
    start_of_day = own_clock[np.arange(n), first]
    length_of_day = own_clock[np.arange(n), first + 1] - start_of_day
    clock = rate * (start_of_day + rng.random(n) * length_of_day)
    day = first.copy()
    churn = np.full(n, days, dtype=np.int64)
    out_cust, out_day, out_clock = [np.arange(n)], [day.copy()], [clock.copy()]
    buying = np.arange(n)
    while buying.size:
        leaves = rng.random(buying.size) < dropout[buying]
        churn[buying[leaves]] = day[buying[leaves]] + 1
        buying = buying[~leaves]
        k = regularity[buying]
        clock[buying] += rng.gamma(k, 1 / k)
        # The day whose clock interval holds the purchase, per type (the clocks differ).
        found = np.empty(buying.size, dtype=np.int64)
        for t in np.unique(arch[buying]):
            sel = arch[buying] == t
            on_type_clock = clock[buying[sel]] / rate[buying[sel]]
            found[sel] = np.searchsorted(clocks[t], on_type_clock, side="right") - 1
        day[buying] = found
        buying = buying[found < days]
        out_cust.append(buying)
        out_day.append(day[buying])
        out_clock.append(clock[buying])
    return np.concatenate(out_cust), np.concatenate(out_day), np.concatenate(out_clock), churn


def _sparse_truth(
    arch: np.ndarray,
    rate: np.ndarray,
    first: np.ndarray,
    churn: np.ndarray,
    cust: np.ndarray,
    day: np.ndarray,
    clock: np.ndarray,
    clocks: np.ndarray,
) -> np.ndarray:
    """P(at least one purchase on each day | the latent state at the day's start), (n, days).

    0 before the first purchase day and from the drop-out day on, 1 on the first purchase
    day; in between, the hazard of the customer's next gap over the day's stretch of their
    clock: ``1 - Q(k, k x1) / Q(k, k x0)``, ``x0`` and ``x1`` the clock time elapsed since the
    last purchase at the day's start and end, Q the regularised upper incomplete gamma.
    """
    n, days = len(arch), clocks.shape[1] - 1
    dd = np.arange(days)[None, :]
    between = (dd > first[:, None]) & (dd < churn[:, None])
    own_clock = clocks[arch] * rate[:, None]
    p = np.zeros((n, days))
    k = np.array([a.regularity for a in SPARSE_ARCHETYPES])[arch]
    # Memoryless buyers (k = 1): the hazard is 1 - exp(-the day's stretch of clock).
    memoryless = k == 1
    stretch = np.diff(own_clock[memoryless], axis=1)
    p[memoryless] = np.where(between[memoryless], -np.expm1(-stretch), 0.0)
    rows = np.flatnonzero(~memoryless)
    if rows.size:
        # Clock time of the last purchase before each day: a purchase on day d counts from d+1.
        last = np.full((n, days + 1), -np.inf)
        np.maximum.at(last, (cust, day + 1), clock)
        last = np.maximum.accumulate(last[rows], axis=1)[:, :days]
        r, d = np.nonzero(between[rows])
        kk = k[rows][r]
        since = last[r, d]
        survived = gammaincc(kk, kk * (own_clock[rows][r, d] - since))
        survives_day = gammaincc(kk, kk * (own_clock[rows][r, d + 1] - since))
        with np.errstate(divide="ignore", invalid="ignore"):
            p[rows[r], d] = np.where(survived > 0, 1 - survives_day / survived, 1.0)
    p[np.arange(n), first] = 1.0
    return p.astype(np.float32)
