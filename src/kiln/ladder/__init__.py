"""Scaling ladders: small runs that predict a bigger one's loss (docs/ladder.md)."""
