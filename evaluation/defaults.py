"""Default sizes of ``babelgate eval`` (import-light: the CLI's ``--help`` reads them).

Runs in any process. Sized so the embedded model's default evaluation fits 30 minutes on 2
cores: 6 languages x 2 classes x 8 test prompts x 8 generating policies x 128 new tokens
(768 generations), a 48-per-class train pool for thresholds, k-shot draws and the baselines'
32-per-class fits, and 40 MMLU questions per policy. Generation is compute-bound here: about
1 request of 128 tokens per second on 2 cores whether batches hold 24 or 64 requests (measured),
so the sizes, not the batching, set the wall time (measured: 12 test prompts per class and
100 MMLU questions took 33 minutes; 10 and 60 were on course for 30; 24 per class took 38
minutes of generation alone). ``--full`` lifts every cap.
"""

# Two high-resource, three mid-resource and the low-resource language of the shared PolyRefuse
# copy (it holds ar de en es fr it ja ko nl pl ru th yo zh; zh has no harmless test split).
DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "de", "ar", "ko", "th", "yo")
DEFAULT_MAX_PER_CLASS = 8
DEFAULT_TRAIN_POOL = 48
DEFAULT_MMLU_MAX = 40
BASELINE_K = 32
# Splits ``babelgate eval`` measures its table on: test, or val for a choice made before it.
EVAL_SPLITS: tuple[str, ...] = ("test", "val")
