"""Model-facing code that needs transformers: embedded model, activation backend, reference.

Imported only where a real model is used; ``gate`` itself never imports it.
"""
