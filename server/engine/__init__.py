"""babelgate inside vLLM: the per-request gate hook, the guarded engine and its self-check.

Which process runs what:
- API server / CLI / tests: ``guarded_engine.GuardedEngine`` (AsyncLLM), ``offline.GuardedLLM``
  (vllm.LLM), ``vllm_backend.VLLMBackend`` (activations), ``startup`` (checks and self-check),
  ``rpc`` (the calls into the worker extension);
- vLLM worker: ``worker_extension`` (the ``collective_rpc`` surface), ``hooks`` (installation and
  refusals), ``step`` (rows per request in a forward), ``interventions`` (routing, capture);
- any: ``types`` (GuardParams in, Verdict out, GateParams for the hook).
"""
