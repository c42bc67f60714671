"""rollwave.inventory."""
