"""trashlib: a reproducible workbook for small, fast trash classifiers."""

__version__ = "0.1.0"
