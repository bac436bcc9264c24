"""See instability, explain it, survive it: spike detection, skip-step, forensics, rollback (reports and sweeps
live in `kiln.experiments`)."""
