"""Resumable uploads (tus 1.0): the protocol's handlers and the parts' storage."""
