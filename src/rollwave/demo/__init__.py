"""rollwave.demo."""
