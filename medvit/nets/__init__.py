"""medvit networks, one file per model."""
