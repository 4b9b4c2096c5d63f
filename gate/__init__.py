"""babelgate's method as a library: a cross-lingual harmfulness gate with per-language thresholds.

Runs in whichever process imports it (notebook, CLI, API server, vLLM worker). Imports only
numpy / torch / safetensors; model-facing code lives in ``gate.hf`` and is imported lazily.
"""
