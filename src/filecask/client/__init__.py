"""The HTTP client (`http`) and its commands (`commands`). It imports nothing of the
server, so `filecask ls` starts fast (tests/test_architecture.py keeps it so)."""
