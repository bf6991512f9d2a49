"""Issue 14 attacks, one module per part: each attacks a server and prints figures."""
