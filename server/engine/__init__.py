"""babelgate inside vLLM: the per-request gate hook, the guarded engine and its self-check."""
