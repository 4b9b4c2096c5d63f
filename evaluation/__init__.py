"""``babelgate eval``: refusal, selectivity, gate quality and utility per language and policy.

Runs in the CLI process; it drives one vLLM engine with babelgate's hook (and the baselines'
interventions beside it), so every policy is measured through the same serving mechanism.
Modules: ``defaults`` (sizes), ``policies`` (the rows compared), ``store`` (resumable JSONL
results), ``engine`` (the guarded vLLM engine and its request kinds), ``kshot`` (threshold draws
and the k-shot curve), ``mmlu`` (utility), ``judges`` (refusal judges and their agreement with a
hand-labelled sample), ``report`` (tables, JSON, Markdown, plots) and ``runner`` (the whole
evaluation, stage by stage).
"""
