"""rollwave.plan."""
