"""rollwave.store."""
