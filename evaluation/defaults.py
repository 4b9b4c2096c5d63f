"""Default sizes of ``babelgate eval`` (import-light: the CLI's ``--help`` reads them).

Runs in any process. Sized so the embedded model's default evaluation fits 30 minutes on 2
cores: 6 languages x 2 classes x 24 test prompts x 8 generating policies x 128 new tokens,
a 72-per-class train pool for thresholds, k-shot draws and the baselines' 32-per-class fits, and
100 MMLU questions per policy. ``--full`` lifts every cap.
"""

# Two high-resource, three mid-resource and the low-resource language of the shared PolyRefuse
# copy (it holds ar de en es fr it ja ko nl pl ru th yo zh; zh has no harmless test split).
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "de", "ar", "ko", "th", "yo")
DEFAULT_MAX_PER_CLASS = 24
DEFAULT_TRAIN_POOL = 72
DEFAULT_MMLU_MAX = 100
BASELINE_K = 32
