"""Fault tolerance: crash-safe checkpoint manifests, a hung-step watchdog, a restarting supervisor, `kiln doctor`."""
