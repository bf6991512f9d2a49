"""The HTTP protocol layer: connections and their limits, the small-download fast path,
sendfile, ranges, response bodies, problem+json mapping, access log and metrics. It knows
requests and bytes, not users or files (those are `filecask.api` and `filecask.storage`)."""
