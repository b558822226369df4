"""The package version (a leaf module: anything may import it without import cycles)."""

__version__ = "0.1.0"
