"""Data: tokenizers, corpora (offline default + local files + evaluation sets + HF datasets),
fixed-length blocks and resumable batch streams, and LAD instruction data.

Each module's docstring states its rules: :mod:`.tokenizers` (ids and specials),
:mod:`.corpus` (splits, detokenization, the :data:`DATASETS` table), :mod:`.blocks`
(wrap / pad, resumable batches), :mod:`.instruct` (response masks). The data folder is
``$DIFFUSIONLM_DATA`` (default ``<repo>/../shared/data``, :mod:`.paths`).

    from diffusionlm.data import load_corpus, load_tokenizer, TokenBlocks, BatchStream
    tok = load_tokenizer("byte")                       # or "data:tokenizers/gpt2", a folder, a hub name
    blocks = TokenBlocks(load_corpus("stdlib", "train"), tok, length=256)   # rule="wrap"
    stream = BatchStream(blocks, batch_size=32, seed=0)
    batch = next(stream)                               # {"input_ids": [32, 256], "attention", ...}
"""
from .blocks import BatchStream, SequenceTooLong, TokenBlocks, check_ids, check_vocab
from .corpus import (
    DATASETS,
    HF_DATASETS,
    describe_datasets,
    hf_dataset,
    known_names,
    lm1b_detokenize,
    load_corpus,
    ptb_detokenize,
    stdlib_files,
    wikitext_detokenize,
)
from .instruct import (
    FormattedInstructions,
    InstructionCollator,
    format_instruction,
    format_instructions,
    templated_prompt,
)
from .paths import data_dir, data_path
from .tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer, as_tokenizer, load_tokenizer, train_bpe

__all__ = [
    "BatchStream",
    "ByteTokenizer",
    "CharTokenizer",
    "DATASETS",
    "FormattedInstructions",
    "HFTokenizer",
    "HF_DATASETS",
    "InstructionCollator",
    "SequenceTooLong",
    "TokenBlocks",
    "Tokenizer",
    "as_tokenizer",
    "check_ids",
    "check_vocab",
    "data_dir",
    "data_path",
    "describe_datasets",
    "format_instruction",
    "format_instructions",
    "hf_dataset",
    "known_names",
    "lm1b_detokenize",
    "load_corpus",
    "load_tokenizer",
    "ptb_detokenize",
    "stdlib_files",
    "templated_prompt",
    "train_bpe",
    "wikitext_detokenize",
]
