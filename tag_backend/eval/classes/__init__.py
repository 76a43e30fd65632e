"""Class-name lists of the standard datasets (package data, read with importlib.resources)."""
