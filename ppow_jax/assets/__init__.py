"""Data shipped with the package: evaluation prompt files and the tiny stories260k model.

They are package data, so a clone and an installed package (`pip install .`) both find them
here, with no download and no folder beside the project. Sources and licences: the LICENSE file
in each folder and README.md here.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))

# Spec-Bench (hemingkx/Spec-Bench, Apache-2.0): 480 prompts in 13 categories.
SPEC_BENCH = os.path.join(HERE, "spec_bench", "question.jsonl")
# HumanEval (openai/human-eval, MIT): 164 Python problems.
HUMAN_EVAL = os.path.join(HERE, "human_eval", "HumanEval.jsonl.gz")
# GSM8K's test set (openai/grade-school-math, MIT): 1319 problems.
GSM8K = os.path.join(HERE, "gsm8k", "test.jsonl")
# Every evaluation file: training prompts that overlap any of them are dropped.
BENCHMARKS = (SPEC_BENCH, HUMAN_EVAL, GSM8K)
# stories260k (karpathy/tinyllamas, MIT) in Hugging Face format: a 260K-parameter LLaMA.
STORIES260K = os.path.join(HERE, "stories260k")
