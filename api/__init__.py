"""cent-serve: the OpenAI-compatible HTTP front end (filled in by the serving issue)."""
