"""rollwave.cli."""
