"""The Feast repository of OmniScore: the feature catalog and the Feast objects built from it."""
