"""The feature catalog: every cross-channel feature's name, view, type and definition.

One list serves the DuckDB pipeline (which must produce exactly these columns), the Feast
feature views, the feature services, ``docs/features.md`` and the models. Windows are
half-open ``[T - w, T)``: a snapshot stamped T uses only events strictly before T.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_layer.schema import CHANNELS, PURCHASE_CHANNELS

ACTIVITY_WINDOWS_DAYS: tuple[int, ...] = (7, 30, 90)
LONG_WINDOW_DAYS = 90
"""Window for transactions, engagement, attitudinal and cross-channel features."""
TOUCH_WINDOW_HOURS = 72
"""A purchase counts as cross-channel when another channel touched the customer this soon before."""
CART_RECOVERY_HOURS = 24
"""An add-to-cart not followed by a purchase (any channel) within this long is abandoned."""
SESSION_GAP_HOURS = 24
"""Events of one (channel, session_id) further apart than this belong to separate sessions, so
whether an event starts a session depends only on the day before it."""
SWITCH_LOOKBACK_DAYS = 30
"""A session is a channel switch only when the customer's previous session started at most this
long before it: an older one is a return, not a switch, and the look-back stays bounded."""
PURCHASE_WINDOWS_DAYS: tuple[int, ...] = (180, 365)
"""Long purchase windows for sparse buyers (a few purchases a year), beside the lifetime ones."""
BGNBD_HORIZON_DAYS = 30
"""Horizon of the BG/NBD expected-purchases feature. One month: the model's expectation is a
smooth, increasing function of the horizon for a given customer, so one horizon carries the
signal for a tree model; 30 days sits between the 14 and 28-day propensity horizons and the
90-day one, and is short enough that the next snapshot (a week later) refreshes it well
before it runs out."""


@dataclass(frozen=True)
class Feature:
    """One feature column of a snapshot."""

    name: str
    view: str
    dtype: str  # "float" or "string"
    description: str
    channel: str | None = None  # the channel it describes, for per-channel explanations


VIEWS: dict[str, str] = {
    "channel_activity": "Behavioral: customer-initiated activity per channel and window.",
    "transactions": "Transactional: RFM overall and per ordering channel.",
    "engagement": "Behavioral: response to messages, carts and browsing depth.",
    "attitudinal": "Attitudinal: support contacts, complaints and ratings.",
    "cross_channel": "Cross-channel: breadth, mix and journeys that span channels.",
    "profile": "Demographic and profile attributes from the customers table.",
}
"""Feature views, one per signal family, with what each holds."""


def _catalog() -> list[Feature]:
    features: list[Feature] = []
    add = features.append
    for ch in CHANNELS:
        for w in ACTIVITY_WINDOWS_DAYS:
            add(
                Feature(
                    f"{ch}_events_{w}d",
                    "channel_activity",
                    "float",
                    f"Customer-initiated events on {ch} in the {w} days before T.",
                    ch,
                )
            )
            add(
                Feature(
                    f"{ch}_active_days_{w}d",
                    "channel_activity",
                    "float",
                    f"Distinct UTC days holding a customer-initiated event on {ch} inside the {w} "
                    "days before T (a day cut by a window edge counts when one of its events is "
                    "inside).",
                    ch,
                )
            )
        add(
            Feature(
                f"{ch}_days_since_last",
                "channel_activity",
                "float",
                f"Days from the last customer-initiated event on {ch} to T (null if none).",
                ch,
            )
        )
    w = LONG_WINDOW_DAYS
    for prefix, ch, where in [("", None, "on any channel")] + [
        (f"{c}_", c, f"on {c}") for c in PURCHASE_CHANNELS
    ]:
        add(
            Feature(
                f"{prefix}purchases_{w}d",
                "transactions",
                "float",
                f"Purchases {where} in the {w} days before T.",
                ch,
            )
        )
        add(
            Feature(
                f"{prefix}revenue_{w}d",
                "transactions",
                "float",
                f"Sum of purchase amounts {where} in the {w} days before T.",
                ch,
            )
        )
        add(
            Feature(
                f"{prefix}avg_order_value_{w}d",
                "transactions",
                "float",
                f"Revenue / purchases {where} in the {w} days before T (null if no purchase).",
                ch,
            )
        )
        add(
            Feature(
                f"{prefix}returns_{w}d",
                "transactions",
                "float",
                f"Returns {where} in the {w} days before T.",
                ch,
            )
        )
        add(
            Feature(
                f"{prefix}return_rate_{w}d",
                "transactions",
                "float",
                f"Returns / purchases {where} in the {w} days before T (null if no purchase).",
                ch,
            )
        )
        add(
            Feature(
                f"{prefix}days_since_last_purchase",
                "transactions",
                "float",
                f"Days from the last purchase {where} to T (null if none).",
                ch,
            )
        )
    for span in PURCHASE_WINDOWS_DAYS:
        add(
            Feature(
                f"purchases_{span}d",
                "transactions",
                "float",
                f"Purchases on any channel in the {span} days before T.",
            )
        )
        add(
            Feature(
                f"revenue_{span}d",
                "transactions",
                "float",
                f"Sum of purchase amounts on any channel in the {span} days before T.",
            )
        )
    add(
        Feature(
            "purchases_lifetime",
            "transactions",
            "float",
            "Purchases on any channel before T (the whole history).",
        )
    )
    add(
        Feature(
            "revenue_lifetime",
            "transactions",
            "float",
            "Sum of purchase amounts on any channel before T (the whole history).",
        )
    )
    add(
        Feature(
            "purchase_days_lifetime",
            "transactions",
            "float",
            "Distinct UTC days holding a purchase before T (lines of one basket count once).",
        )
    )
    add(
        Feature(
            "purchase_gap_mean_days",
            "transactions",
            "float",
            "Mean number of days between consecutive purchase days before T: (last purchase day "
            "- first purchase day) / (purchase days - 1) (null with fewer than two purchase days).",
        )
    )
    add(
        Feature(
            "purchase_gap_std_days",
            "transactions",
            "float",
            "Standard deviation (population) of the days between consecutive purchase days "
            "before T (0 with one gap, null with fewer than two purchase days).",
        )
    )
    add(
        Feature(
            "purchase_recency_ratio",
            "transactions",
            "float",
            "days_since_last_purchase / purchase_gap_mean_days: how overdue the customer is "
            "against their usual gap (null with fewer than two purchase days).",
        )
    )
    bgnbd_fit = (
        "BG/NBD (Fader, Hardie & Lee 2005) on the customer's purchase days before T: x repeat "
        "purchase days, t_x and T in whole UTC days from the first purchase day to the last one "
        "and to T's day, with the four population parameters fitted at T by maximum likelihood "
        "on every customer's purchases before T (nothing at or after T; the parameters of each "
        "instant are stored in `bgnbd_params.json` beside the snapshots, and the live path uses "
        "those of the latest instant at or before its own). Null with no purchase before T, or "
        "when no customer was observed after a purchase (nothing to fit)"
    )
    add(
        Feature(
            "bgnbd_p_alive",
            "transactions",
            "float",
            f"P(the customer has not dropped out by T): {bgnbd_fit}. 1 with a single purchase "
            "day (in BG/NBD a customer drops out only right after a repeat purchase).",
        )
    )
    add(
        Feature(
            f"bgnbd_expected_purchases_{BGNBD_HORIZON_DAYS}d",
            "transactions",
            "float",
            f"Expected purchase days in the {BGNBD_HORIZON_DAYS} days after T: {bgnbd_fit}. "
            f"{BGNBD_HORIZON_DAYS} days: one month, between the 14 and 28-day propensity "
            "horizons and the 90-day one; the expectation grows smoothly with the horizon, so "
            "one horizon carries the signal for the models.",
        )
    )
    add(
        Feature(
            f"email_open_rate_{w}d",
            "engagement",
            "float",
            f"email_open / email_send in the {w} days before T (null if nothing sent).",
            "email",
        )
    )
    add(
        Feature(
            f"email_click_rate_{w}d",
            "engagement",
            "float",
            f"email_click / email_send in the {w} days before T (null if nothing sent).",
            "email",
        )
    )
    add(
        Feature(
            f"push_open_rate_{w}d",
            "engagement",
            "float",
            f"push_open / push_send in the {w} days before T (null if nothing sent).",
            "push",
        )
    )
    add(
        Feature(
            f"sms_click_rate_{w}d",
            "engagement",
            "float",
            f"sms_click / sms_send in the {w} days before T (null if nothing sent).",
            "sms",
        )
    )
    add(
        Feature(
            f"cart_abandonment_rate_{w}d",
            "engagement",
            "float",
            f"Share of add_to_cart events in the {w} days before T with no purchase on any "
            f"channel within {CART_RECOVERY_HOURS} h after them and before T (null if no cart).",
        )
    )
    add(
        Feature(
            "sessions_30d",
            "engagement",
            "float",
            "Web and app sessions started in the 30 days before T. A session is a "
            "(channel, session_id), or a (channel, UTC day) for events without a session_id, "
            f"split where two of its events are more than {SESSION_GAP_HOURS} h apart; it starts "
            "at its first customer-initiated event.",
        )
    )
    add(
        Feature(
            "product_views_per_session_30d",
            "engagement",
            "float",
            "Web and app product_view events / sessions in the 30 days before T "
            "(null if no session).",
        )
    )
    add(
        Feature(
            f"support_contacts_{w}d",
            "attitudinal",
            "float",
            f"support_contact events in the {w} days before T.",
        )
    )
    add(
        Feature(
            f"complaints_{w}d",
            "attitudinal",
            "float",
            f"complaint events in the {w} days before T.",
        )
    )
    add(
        Feature(
            f"avg_rating_{w}d",
            "attitudinal",
            "float",
            f"Mean rating of reviews and survey responses in the {w} days before T (null if none).",
        )
    )
    add(
        Feature(
            f"low_ratings_{w}d",
            "attitudinal",
            "float",
            f"Reviews and survey responses rated 2 or lower in the {w} days before T.",
        )
    )
    add(
        Feature(
            f"active_channels_{w}d",
            "cross_channel",
            "float",
            f"Distinct channels with a customer-initiated event in the {w} days before T.",
        )
    )
    add(
        Feature(
            f"channel_entropy_{w}d",
            "cross_channel",
            "float",
            f"Shannon entropy (bits) of customer-initiated events over channels in the {w} days "
            "before T (0 for one channel, null if no event).",
        )
    )
    add(
        Feature(
            f"online_revenue_share_{w}d",
            "cross_channel",
            "float",
            f"Share of revenue in the {w} days before T placed on online channels "
            "(null if no revenue); the rest is offline (store, call centre).",
        )
    )
    add(
        Feature(
            f"preferred_channel_{w}d",
            "cross_channel",
            "string",
            f"Channel with the most customer-initiated events in the {w} days before T "
            "(ties go to the alphabetically first; null if no event).",
        )
    )
    add(
        Feature(
            f"cross_channel_purchase_rate_{w}d",
            "cross_channel",
            "float",
            f"Share of purchases in the {w} days before T preceded within {TOUCH_WINDOW_HOURS} h "
            "by a customer-initiated event on another channel (null if no purchase).",
        )
    )
    add(
        Feature(
            f"web_to_store_purchase_rate_{w}d",
            "cross_channel",
            "float",
            f"Share of store purchases in the {w} days before T preceded within "
            f"{TOUCH_WINDOW_HOURS} h by a customer-initiated web event "
            "(null if no store purchase).",
        )
    )
    add(
        Feature(
            f"email_to_app_purchase_rate_{w}d",
            "cross_channel",
            "float",
            f"Share of app purchases in the {w} days before T preceded within "
            f"{TOUCH_WINDOW_HOURS} h by an email open or click (null if no app purchase).",
        )
    )
    add(
        Feature(
            f"channel_switches_{w}d",
            "cross_channel",
            "float",
            f"Sessions (of customer-initiated events, any channel) started in the {w} days "
            "before T whose channel differs from the customer's previous session (on any "
            f"channel), when that one started at most {SWITCH_LOOKBACK_DAYS} days before it "
            "(an older one is a return, not a switch).",
        )
    )
    add(
        Feature(
            "events_trend_30d",
            "cross_channel",
            "float",
            "ln((events in [T-30d, T) + 1) / (events in [T-60d, T-30d) + 1)), customer-initiated.",
        )
    )
    add(
        Feature(
            "revenue_trend_30d",
            "cross_channel",
            "float",
            "ln((revenue in [T-30d, T) + 1) / (revenue in [T-60d, T-30d) + 1)).",
        )
    )
    add(
        Feature(
            "tenure_days",
            "profile",
            "float",
            "Days to T from the earlier of signup and the first event before T.",
        )
    )
    for col, what in [
        ("region", "Region from the customers table."),
        ("age_band", "Age band from the customers table."),
        ("loyalty_tier", "Loyalty tier from the customers table."),
        ("preferred_device", "Preferred device from the customers table."),
    ]:
        add(Feature(col, "profile", "string", what))
    return features


BUILTIN_FEATURES: tuple[Feature, ...] = tuple(_catalog())
"""The catalog without any home's extra profile features."""
# The next four hold the built-in features plus the extra profile features a home declares
# (:func:`use_profile_extras`). They are updated in place, never rebound, so every module that
# imported them sees the same catalog.
FEATURES: list[Feature] = list(BUILTIN_FEATURES)
FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
FEATURE_NAMES: list[str] = [f.name for f in FEATURES]
CATEGORICAL_FEATURES: list[str] = [f.name for f in FEATURES if f.dtype == "string"]

PROFILE_EXTRA_DTYPES: dict[str, str] = {"categorical": "string", "numeric": "float"}
"""Kinds of extra profile feature a customers mapping may declare, and their catalog dtype."""


def profile_extra_features(extras: dict[str, str]) -> list[Feature]:
    """Catalog entries (view ``profile``) for declared extra profile columns: name → kind."""
    out = []
    for name, kind in extras.items():
        if kind not in PROFILE_EXTRA_DTYPES:
            known = ", ".join(PROFILE_EXTRA_DTYPES)
            raise ValueError(f"profile feature {name!r}: kind {kind!r} is not one of {known}")
        if any(f.name == name for f in BUILTIN_FEATURES):
            raise ValueError(f"profile feature {name!r} is already a catalog feature")
        what = f"{name} ({kind}), declared by the customers mapping: its latest row before T."
        out.append(Feature(name, "profile", PROFILE_EXTRA_DTYPES[kind], what))
    return out


def use_profile_extras(extras: dict[str, str]) -> None:
    """Make the catalog the built-in features plus a home's extra profile features.

    ``Settings.from_env`` calls it with the home's declaration (``profile_features.json``,
    written by ``omniscore ingest-customers``), so the feature pipeline, the Feast views and
    services and the models of that home all see the extras. ``{}`` restores the built-ins.
    """
    features = [*BUILTIN_FEATURES, *profile_extra_features(extras)]
    FEATURES[:] = features
    FEATURES_BY_NAME.clear()
    FEATURES_BY_NAME.update((f.name, f) for f in features)
    FEATURE_NAMES[:] = [f.name for f in features]
    CATEGORICAL_FEATURES[:] = [f.name for f in features if f.dtype == "string"]


RFM_FEATURES: tuple[str, ...] = (
    f"purchases_{LONG_WINDOW_DAYS}d",
    f"revenue_{LONG_WINDOW_DAYS}d",
    f"avg_order_value_{LONG_WINDOW_DAYS}d",
    "days_since_last_purchase",
)
"""Recency, frequency and monetary value: the classic baseline's inputs."""


def features_of_view(view: str) -> list[Feature]:
    """The features a feature view holds, in catalog order."""
    return [f for f in FEATURES if f.view == view]


SEGMENT_FEATURES: tuple[str, ...] = (
    *(f"{ch}_events_90d" for ch in CHANNELS),
    "purchases_90d",
    "revenue_90d",
    "avg_order_value_90d",
    "days_since_last_purchase",
    "email_open_rate_90d",
    "cart_abandonment_rate_90d",
    "support_contacts_90d",
    "avg_rating_90d",
    "active_channels_90d",
    "channel_entropy_90d",
    "online_revenue_share_90d",
    "events_trend_30d",
    "tenure_days",
)
"""Compact behavioural description used to learn segments (served as ``segments_v1``)."""

FEATURE_SERVICES: dict[str, str] = {
    "propensity_v1": "All cross-channel features, for the purchase-propensity model.",
    "churn_v1": "All cross-channel features, for the churn-risk model.",
    "segments_v1": "Compact channel-mix, value and engagement features for segmentation.",
}
"""Model contracts: training and serving fetch features by these names."""


def service_features(service: str) -> list[str]:
    """Feature names of a feature service, in catalog order."""
    if service in ("propensity_v1", "churn_v1"):
        return list(FEATURE_NAMES)
    if service == "segments_v1":
        return [n for n in FEATURE_NAMES if n in SEGMENT_FEATURES]
    raise KeyError(f"unknown feature service {service!r}; known: {sorted(FEATURE_SERVICES)}")


def features_markdown() -> str:
    """``docs/features.md``: every feature with its one-line definition, by feature view."""
    lines = [
        "# Features",
        "",
        "Generated from `feature_repo/catalog.py` (`python -m feature_repo.catalog > "
        "docs/features.md`); a test keeps the two equal.",
        "",
        "A snapshot stamped T uses only events strictly before T. T is any instant (UTC, "
        "microsecond resolution), not only a midnight. *Customer-initiated* events are those of "
        "the behavioral, transactional and attitudinal families (sends and impressions are "
        "contextual: the business acted, not the customer).",
        "",
        "## What a window means at any instant",
        "",
        "- **A window of w days** is the half-open interval `[T - w × 24 h, T)` in continuous "
        "time: at T = 2026-06-03 14:25 UTC the 7-day window starts at 2026-05-27 14:25, and an "
        "event exactly at 14:25 that day is inside, one a microsecond earlier is outside. At a UTC "
        "midnight this is the same as w whole UTC days.",
        "- **Active days** still count UTC calendar days: a day cut by the window's start edge "
        "counts when one of its events is at or after the edge; today counts when one of its "
        "events is before T.",
        "- **Days since** and **tenure** are fractional days from the event (or signup) to T.",
        "- **Flags look only backwards from their own event, or a fixed span forwards that is "
        "re-checked against T**: a purchase is cross-channel when another channel touched the "
        f"customer in the {TOUCH_WINDOW_HOURS} h before it; a cart is recovered only by a "
        f"purchase within {CART_RECOVERY_HOURS} h after it *and before T*; a session starts where "
        f"its (channel, session_id) had no event in the previous {SESSION_GAP_HOURS} h; a switch "
        f"looks back at most {SWITCH_LOOKBACK_DAYS} days for the previous session. So no event at "
        "or after T can change a snapshot at T.",
        "",
        "## Bounded history: why the live path gives the same values",
        "",
        f"Every feature at T depends only on the customer's events in the "
        f"{LONG_WINDOW_DAYS + SWITCH_LOOKBACK_DAYS} days and {SESSION_GAP_HOURS} h before T (the "
        f"longest window, plus the switch look-back and one session gap), plus four lifetime "
        "scalars that are idempotent to fold (a minimum or a maximum): the first event, the last "
        "customer-initiated event per channel and the last purchase per channel (for *days "
        "since* and *tenure*), plus the customer's purchases at any age (for the "
        f"{' and '.join(f'{d}-day' for d in PURCHASE_WINDOWS_DAYS)} and lifetime purchase "
        "features; a set keyed by event id, so folding one twice changes nothing). The live state "
        "(`data_layer/live_state.py`) keeps a horizon of events a little longer than that, every "
        "purchase, and the events that set the lifetime scalars, and "
        "computes features by running this same pipeline on them, so the live path and the "
        "batch pipeline give equal values at the same instant.",
        "",
        "## BG/NBD features: one population fit per instant",
        "",
        "`bgnbd_p_alive` and `bgnbd_expected_purchases_"
        f"{BGNBD_HORIZON_DAYS}d` are the one place where a customer's features depend on other "
        "customers: the BG/NBD model's four population parameters are fitted at each snapshot "
        "instant T by maximum likelihood on every customer's purchase-day summary before T "
        "(nothing at or after T, so no leakage; the point-in-time property test covers them). "
        "Each build fits them once per instant over the whole store, before any customer "
        "partition or Spark task, so the one-pass, partitioned and Spark builds give identical "
        "values, and stores them in `bgnbd_params.json` beside the snapshots. The "
        "per-customer values are closed forms of the customer's own purchase days and those "
        "parameters: the live path computes them with the parameters of the latest built "
        "instant at or before its own (never a later one, which has seen the future), so at a "
        "built instant it equals the batch exactly and between builds it applies the previous "
        "fit to the customer's current purchases. A population with no repeat purchase "
        "identifies no parameters: both features are then null. The parameters are aggregates "
        "of the whole population, not a customer's data, so erasure leaves the file as it is "
        "until the next build.",
        "",
        "## Customers with no events",
        "",
        "A customer appears in a snapshot at T when they signed up before T or have any event "
        "before T. A customer with neither (no profile row and no event before T) has no row: "
        "no features at all. With a profile row and no event before T: every count and sum is 0 "
        "(`events_trend_30d` and `revenue_trend_30d` are ln(1/1) = 0), every ratio, average and "
        "*days since* is null (nothing to divide by, nothing seen), `preferred_channel_90d` is "
        "null, `tenure_days` runs from signup, and the profile columns come from the customers "
        "table. A customer with events but no profile row has null profile columns and a tenure "
        "from their first event.",
        "",
        "| feature service | what it serves |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {text} |" for name, text in FEATURE_SERVICES.items()]
    for view, text in VIEWS.items():
        members = features_of_view(view)
        lines += ["", f"## `{view}` ({len(members)} features)", "", text, ""]
        lines += ["| feature | type | definition |", "|---|---|---|"]
        lines += [f"| `{f.name}` | {f.dtype} | {f.description} |" for f in members]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(features_markdown(), end="")
