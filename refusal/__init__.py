"""Did the model refuse? The multilingual refusal-marker judge (``refusal.judge``).

A leaf package: it imports nothing else of babelgate, so the API server (every served response
with the ``refuse`` action checks its template), the evaluation and the sweep can all use it
without importing one another. Its marker tables are package data (``markers.json``).
"""
