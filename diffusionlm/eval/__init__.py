"""Evaluation: likelihood bounds, generative perplexity, diversity, the lm-eval-harness adapter.

    from diffusionlm.eval import evaluate_likelihood, generative_perplexity, sample_and_judge
    from diffusionlm.eval import unigram_entropy, distinct_n, mauve_score
    from diffusionlm.eval import conditional_nll_bound
    from diffusionlm.eval.lm_eval_adapter import DiffusionLMEval   # registers "diffusionlm" with lm-eval

Every definition (bound, PPL, token counting, M, seeding, per-dataset rules, gen PPL weighting,
fp64 vs fp32 sampling) is written down once in docs/EVALUATION.md and in each module's
docstring: :mod:`.bound`, :mod:`.likelihood`, :mod:`.generative`, :mod:`.diversity`,
:mod:`.lm_eval_adapter`. The optional extras (``lm-eval``, ``mauve-text``) are imported only
where they are used.
"""
from .bound import ConditionalBound, conditional_nll_bound, relevant_steps, row_generators
from .diversity import distinct_n, mauve_score, unigram_entropy
from .generative import generative_perplexity, judge_encode, load_judge, sample_and_judge
from .likelihood import dataset_blocks, evaluate_likelihood, known_datasets

__all__ = [
    "ConditionalBound",
    "DiffusionLMEval",
    "conditional_nll_bound",
    "dataset_blocks",
    "distinct_n",
    "evaluate_likelihood",
    "generative_perplexity",
    "judge_encode",
    "known_datasets",
    "load_judge",
    "mauve_score",
    "relevant_steps",
    "row_generators",
    "sample_and_judge",
    "unigram_entropy",
]


def __getattr__(name: str):
    # the adapter imports lm_eval when it is installed: only on demand
    if name == "DiffusionLMEval":
        from .lm_eval_adapter import DiffusionLMEval  # optional: lm-eval, imported by the adapter when installed

        return DiffusionLMEval
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
