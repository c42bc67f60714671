"""rollwave.traffic."""
