"""babelgate's product shell: CLI, vLLM integration, OpenAI-compatible server, admin and metrics."""
