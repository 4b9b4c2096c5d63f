"""The baselines ``babelgate eval`` compares routing with: adapted AdaSteer and CAST.

``fitting`` fits them per language (pure numpy, in the evaluation's process); ``interventions``
applies them inside the vLLM worker, beside routing, through ``BaselineWorkerExtension`` (a
subclass of babelgate's worker extension that the evaluation's engine is started with, by import
path). Only the evaluation uses them: ``server`` never imports this package.
"""
