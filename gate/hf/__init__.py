"""Model-facing code that needs transformers: embedded model, activation backend, reference routing."""
