"""The data layer: the canonical event store, ingest, the synthetic world, the feature
pipeline and the Feast driver. It knows no model and no endpoint."""
