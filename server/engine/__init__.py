"""babelgate inside vLLM: the guard in the model's forward, the guarded engine and its self-check.

Which process runs what:
- API server / CLI / tests: ``guarded_engine.GuardedEngine`` (AsyncLLM), ``offline.GuardedLLM``
  (vllm.LLM), ``vllm_backend.VLLMBackend`` (activations), ``startup`` (checks, engine options,
  self-check), ``rpc`` (the calls into the worker);
- vLLM worker: ``worker`` (puts the guard into the model at load; the ``collective_rpc``
  surface), ``model`` (refusals), ``guard_graph`` (the maths inside the forward, compiled or
  eager), ``runtime`` (slots and buffers filled around each step, verdicts), ``step`` (rows per
  request in a forward);
- any: ``types`` (GuardParams in, Verdict out, GateParams for the guard).
"""
