"""Flax Linen models. Each family has its own module; shared building blocks live in `layers`."""
