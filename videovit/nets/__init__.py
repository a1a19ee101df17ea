"""videovit networks, one file per model."""
