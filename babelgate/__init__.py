"""babelgate: a cross-lingual safety guardrail inside vLLM serving.

The one import name the distribution installs. Its subpackages keep their top-level folders in the
repository (``pyproject.toml`` maps each with ``package-dir``), bottom up, each importing only
those below it: ``babelgate.paths`` and ``babelgate.refusal`` (leaves), ``babelgate.gate`` (the
method, usable without a server), ``babelgate.server`` (vLLM integration and the API server),
``babelgate.evaluation`` and ``babelgate.cli`` (the ``babelgate`` command).
"""
