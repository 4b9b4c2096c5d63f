"""babelgate's method as a library: a cross-lingual harmfulness gate with per-language thresholds.

Runs in whichever process imports it (notebook, CLI, API server, vLLM worker). Imports only
numpy / torch / safetensors; model-facing code lives in ``gate.hf`` and is imported lazily.
"""

from babelgate.gate.artifact import ArtifactError, ModelInfo, model_info_from_config
from babelgate.gate.directions import (
    language_directions,
    mean_difference,
    pooled_direction,
    steering_alpha,
    svd_basis,
)
from babelgate.gate.estimator import GateConfig, HarmfulnessGate, ThresholdRecord
from babelgate.gate.languages import (
    HIGH_RESOURCE,
    LOW_RESOURCE,
    MID_RESOURCE,
    PAPER_LANGUAGES,
    UnknownLanguageError,
    validate_language,
)
from babelgate.gate.metrics import auroc, f1_score, selectivity
from babelgate.gate.readout import LogisticReadout
from babelgate.gate.threshold import balanced_f1, balanced_f1_threshold

__all__ = [
    "HIGH_RESOURCE",
    "LOW_RESOURCE",
    "MID_RESOURCE",
    "PAPER_LANGUAGES",
    "ArtifactError",
    "GateConfig",
    "HarmfulnessGate",
    "LogisticReadout",
    "ModelInfo",
    "ThresholdRecord",
    "UnknownLanguageError",
    "auroc",
    "balanced_f1",
    "balanced_f1_threshold",
    "f1_score",
    "language_directions",
    "mean_difference",
    "model_info_from_config",
    "pooled_direction",
    "selectivity",
    "steering_alpha",
    "svd_basis",
    "validate_language",
]
