"""The HTTP API: one module per resource (files, archives and bundles, users, ops, metrics,
pages, docs), what they share (`common`), and the OpenAPI document."""
