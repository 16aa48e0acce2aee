"""omniscore."""
