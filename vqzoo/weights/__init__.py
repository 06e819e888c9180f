"""Bundled zoo weights (data): one folder per variant, and pins.json."""
