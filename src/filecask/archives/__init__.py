"""Streaming ZIP archives: the byte layout (`zipplan`), folder and bundle plans (`plans`)
and bundle manifests (`manifest`)."""
