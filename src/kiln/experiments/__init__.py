"""Experiments over many runs: `kiln sweep` trains a grid of variations, `kiln report` plots and tabulates run
folders from what they logged. Stability studies, muP and the scaling ladder all build on these."""
