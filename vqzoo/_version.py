"""The package version, low in the layers so that any module may import it."""

__version__ = "0.2.0"  # keep equal to pyproject.toml's version
