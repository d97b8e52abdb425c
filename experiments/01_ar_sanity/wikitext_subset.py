"""Study 1's AR model out of domain: WikiText-2 raw test, only where a 65-character model can score it.

    python experiments/01_ar_sanity/wikitext_subset.py [RUN_DIR]

The character vocabulary refuses characters it does not have (digits, '=', '"', brackets: 2.4%
of the test characters), so only the rows made entirely of its 65 characters are scored (377 of
the 2,891 non-empty rows, 104,703 characters): they are concatenated as the corpus rule does
(each row + EOS), cut into 64-character blocks, and scored with the exact causal NLL (the final
partial block dropped). Prints one JSON object (nats / character). A byte-level model would
score the whole test set; none was trained in this session.
"""
import json
import sys

import torch

from diffusionlm.compare import ar_judge_nll
from diffusionlm.data import TokenBlocks, load_corpus
from diffusionlm.io.hub import load_model


def main(path: str = "experiments/01_ar_sanity/run/models/ar") -> dict:
    loaded = load_model(path)
    tok = loaded.tokenizer
    rows = [r for r in load_corpus("wikitext2-raw", "test") if r.strip()]
    ok = [r for r in rows if all(c in tok.stoi for c in r)]
    ids = TokenBlocks(ok, tok, 64).ids
    nll = sum(ar_judge_nll(loaded.lm, b)[0] for b in ids.split(128))
    chars = "".join(load_corpus("wikitext2-raw", "test"))
    return {"model": path, "rows_nonempty": len(rows), "rows_in_vocabulary": len(ok),
            "chars_outside_vocabulary": sum(c not in tok.stoi for c in chars), "chars_total": len(chars),
            "blocks": int(ids.shape[0]), "nll_per_char": nll / ids.numel()}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=2))
