"""TAG pre-labelling engine and Label Studio ML backend."""

__version__ = "0.1.0"
