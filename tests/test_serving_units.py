"""Serving's pure parts: settings, key checks, error summaries, value decoding, model inputs.

Expected values are hand-made or come from the training code's own pandas implementations
(``encode_frame``, ``Preprocessor.transform``), which the numpy serving path must match.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_layer.online_format import decode_cells, decode_value, encode_doubles, encode_strings
from serving.config import ServeConfig
from serving.guard import authorized, summarise_validation
from serving.online import MISSING_TIMESTAMP, FeatureBatch, FeatureLayout, fill_batch
from serving.scoring import ClassifierPlan, SegmentPlan, channel_group, iso_timestamp
from training.model_io import ClassifierPackage, LoadedModel, encode_frame
from training.segments import fit_segment_model


def test_serve_config_reads_the_environment_and_refuses_bad_values():
    default = ServeConfig.from_env({})
    assert (default.max_ids, default.api_key, default.reload_interval) == (1000, None, 30.0)
    config = ServeConfig.from_env(
        {"OMNISCORE_MAX_IDS": "50", "OMNISCORE_API_KEY": "k" * 20, "OMNISCORE_RELOAD_INTERVAL": "0"}
    )
    assert (config.max_ids, config.api_key, config.reload_interval) == (50, "k" * 20, 0.0)
    with pytest.raises(ValueError, match="OMNISCORE_MAX_IDS"):
        ServeConfig.from_env({"OMNISCORE_MAX_IDS": "many"})
    with pytest.raises(ValueError, match="at least 16"):
        ServeConfig.from_env({"OMNISCORE_API_KEY": "short"})
    with pytest.raises(ValueError, match="online_read"):
        ServeConfig.from_env({"OMNISCORE_ONLINE_READ": "psychic"})


def test_the_server_runs_optimized_unless_told_otherwise(tmp_path):
    from data_layer.settings import Settings
    from serving.launcher import server_env

    settings = Settings.from_env(tmp_path)
    assert server_env(settings, base={})["PYTHONOPTIMIZE"] == "1"
    assert server_env(settings, base={"PYTHONOPTIMIZE": "0"})["PYTHONOPTIMIZE"] == "0"


def test_a_pin_file_left_in_the_checkout_is_refused_not_silently_served(tmp_path):
    # A copy of the layout, not the real checkout: a pin file written there would be refused by
    # every server another test worker starts meanwhile.
    from serving.config import ServeConfigError, bundled_pins

    pin_file = tmp_path / "serving" / "pinned_models.json"
    assert bundled_pins(pin_file) is None
    pin_file.parent.mkdir()
    pin_file.write_text('{"versions": {"propensity": "1"}}')
    assert bundled_pins(pin_file) == str(pin_file), "a built Bento (no .git) serves its pins"
    (tmp_path / ".git").mkdir()
    with pytest.raises(ServeConfigError, match="OMNISCORE_PINNED_MODELS"):
        bundled_pins(pin_file)
    named = ServeConfig.from_env({"OMNISCORE_PINNED_MODELS": str(pin_file)})
    assert named.pinned_models == str(pin_file)
    assert ServeConfig.from_env({}).pinned_models is None


def test_bearer_key_check():
    key = b"s3cret-key-0123456789"
    assert authorized(b"Bearer s3cret-key-0123456789", key)
    assert authorized(b"bearer s3cret-key-0123456789", key)
    assert not authorized(b"Bearer s3cret-key-012345678", key)
    assert not authorized(b"Bearer s3cret-key-01234567890", key)
    assert not authorized(b"Basic s3cret-key-0123456789", key)
    assert not authorized(b"s3cret-key-0123456789", key)
    assert not authorized(None, key)


def test_validation_errors_are_summarised_field_by_field():
    detail = [
        {
            "type": "string_type",
            "loc": ["customer_ids", 1],
            "msg": "Input should be a valid string",
        },
        {"type": "extra_forbidden", "loc": ["limit"], "msg": "Extra inputs are not permitted"},
    ]
    assert summarise_validation(detail) == (
        "customer_ids.1: Input should be a valid string; limit: Extra inputs are not permitted"
    )
    assert summarise_validation("not a list") is None


def test_stored_values_decode_to_numbers_strings_and_missing():
    doubles, _ = encode_doubles(np.array([1.5, np.nan, -0.0, 1e300]))
    strings, _ = encode_strings(["desktop", None, "é" * 200])
    assert [decode_value(b) for b in doubles[[0, 2, 3]]] == [1.5, -0.0, 1e300]
    assert decode_value(doubles[1]) is None
    # "desktop" is nine bytes serialised, like a double: the tag tells them apart.
    assert len(strings[0]) == 9 and decode_value(strings[0]) == "desktop"
    assert decode_value(strings[2]) == "é" * 200 and decode_value(strings[1]) is None


def test_stored_cells_decode_into_a_batch_that_marks_known_customers():
    layout = FeatureLayout({"a": ("x", "y"), "profile": ("region",)})
    x, _ = encode_doubles(np.array([2.0, np.nan, 7.0]))
    region, _ = encode_strings(["north"])
    int_five = b"\x20\x05"  # ValueProto(int64_val=5): not a double, still a number
    explicit_null = b"\x98\x01\x00"  # ValueProto(null_val=NULL): non-empty, yet no value
    # customer 0: x=2, y missing (null), region north; customer 1: x=7, y=5, region null;
    # customer 2: none
    missing = MISSING_TIMESTAMP
    seconds = np.array([[100, 50], [200, 60], [missing, missing]])
    rows = np.array([0, 0, 0, 1, 1, 1])
    cols = np.array([0, 1, 2, 0, 1, 2])
    blobs = [x[0], x[1], region[0], x[2], int_five, explicit_null]
    cells = decode_cells(seconds, rows, cols, blobs)
    assert (cells.rows.tolist(), cells.cols.tolist(), cells.values.tolist()) == (
        [0, 1],
        [0, 0],
        [2.0, 7.0],
    )
    assert (cells.other_rows, cells.other_cols, cells.others) == ([0, 1], [2, 1], ["north", 5])
    batch = fill_batch(layout, ["c0", "c1", "c2"], cells)
    assert np.array_equal(
        batch.numeric, [[2.0, np.nan, np.nan], [7.0, 5.0, np.nan], [np.nan] * 3], equal_nan=True
    )
    assert batch.strings["region"].tolist() == ["north", None, None]
    assert batch.timestamps.tolist() == [[100, 50], [200, 60], [missing, missing]]
    assert batch.known.tolist() == [True, True, False]


def _frame_and_batch(rng, names, strings=(), n=60):
    frame = pd.DataFrame({name: rng.gamma(2.0, 3.0, n) for name in names})
    frame.iloc[::7, 1] = np.nan
    for s in strings:
        frame[s] = rng.choice(["north", "south", "mars", None], n)
    layout = FeatureLayout({"all": tuple([*names, *strings])})
    numeric = np.full((n, len(layout.names)), np.nan)
    numeric[:, : len(names)] = frame[list(names)].to_numpy()
    batch = FeatureBatch(
        customer_ids=[f"c{i}" for i in range(n)],
        numeric=numeric,
        strings={s: frame[s].to_numpy(dtype=object) for s in strings},
        timestamps=np.zeros((n, 1), dtype=np.int64),
        known=np.ones(n, dtype=bool),
    )
    return frame, layout, batch


@pytest.mark.parametrize("n", [60, 3000])  # small requests use dicts, large batches pandas
def test_classifier_inputs_match_the_training_encoder(n):
    names = ["web_events_30d", "purchases_90d", "email_open_rate_90d"]
    frame, layout, batch = _frame_and_batch(np.random.default_rng(0), names, ["region"], n)
    inputs = ["purchases_90d", "region", "web_events_30d"]
    vocab = {"region": ["north", "south"]}  # "mars" was never seen in training: NaN
    package = ClassifierPackage(None, inputs, vocab, {"a": 1.0, "b": 0.0}, [], [], {})
    model = LoadedModel("m", "1", "classifier", "svc", inputs, {}, {}, classifier=package)
    plan = ClassifierPlan.build(model, layout)
    expected = encode_frame(frame, inputs, vocab)
    assert np.array_equal(plan.matrix(batch), expected, equal_nan=True)
    assert plan.matrix(batch).flags["C_CONTIGUOUS"]
    some = np.array([0, 5, 7])
    assert np.array_equal(plan.matrix(batch, some), expected[some], equal_nan=True)
    assert plan.groups == ("cross_channel", "profile", "web")
    assert plan.membership.sum(axis=0).tolist() == [1.0, 1.0, 1.0]


def test_segment_assignment_matches_the_pandas_preprocessor():
    names = ["web_events_90d", "purchases_90d", "days_since_last_purchase", "tenure_days"]
    frame, layout, batch = _frame_and_batch(np.random.default_rng(1), names)
    seg = fit_segment_model(frame, names, "kmeans", 3, seed=0)
    model = LoadedModel("s", "1", "segments", "segments_v1", seg.features, {}, {}, segments=seg)
    plan = SegmentPlan.build(model, layout)
    assert np.allclose(plan.scaled(batch), seg.preprocessor.transform(frame))
    ids, names_out = plan.assign(batch)
    expected_ids, expected_names = seg.assign(frame)
    assert ids.tolist() == expected_ids.tolist()
    assert names_out.tolist() == expected_names.tolist()


def test_channel_groups_and_timestamps():
    assert channel_group("email_open_rate_90d") == "email"
    assert channel_group("region") == "profile"
    assert channel_group("active_channels_90d") == "cross_channel"
    assert channel_group("not_in_catalog") == "other"
    assert iso_timestamp(1_782_691_200) == "2026-06-29T00:00:00Z"
    assert iso_timestamp(MISSING_TIMESTAMP) is None
