"""filecask: a self-hosted, content-addressed HTTP file store."""

__version__ = "0.1.0"
