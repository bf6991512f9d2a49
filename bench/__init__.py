"""filecask's benchmark suite: `python -m bench` (see `python -m bench --help`).

Every comparison runs filecask and a reference (nginx, the local disk, the old `zip`
pipeline, or filecask itself under another load) alternately in one run, because the
machines it runs on are shared and noisy: only ratios taken side by side mean anything.
"""
