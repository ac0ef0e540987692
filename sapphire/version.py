"""The package version: the single source (pyproject.toml reads it; stores and emulators record it)."""

__version__ = "0.1.0"
