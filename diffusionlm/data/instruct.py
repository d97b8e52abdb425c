"""Instruction data for LAD (the LAD paper, section 2.2 and appendices A/B): prompt + response
token ids with a mask saying which positions are the response (noise and loss go there only).

Rules
-----
* With a chat template (``chat_template=True`` and the tokenizer has one, or a Jinja string
  given as ``chat_template``): ``P`` = the template applied to the user turn (after an optional
  system turn) WITH the generation prompt; ``C`` = the template applied to the conversation
  user + assistant(response). ``C`` must start with ``P`` (else ValueError). The ids are
  ``encode(P) + encode(C[len(P):])``, so the response starts exactly at ``len(encode(P))``,
  the token length of the templated prompt alone. (Encoding ``C`` in one piece gives the same
  ids whenever no token straddles the boundary, as with templates whose generation prompt ends
  in a special token or a newline.)
* Without a template (or ``chat_template=False``): ``encode(prompt) + encode(response)``; add
  any separator to the strings yourself.
* EOS is appended after the response, unless the ids already end with EOS (a template that
  closes the assistant turn with the EOS token, e.g. Llama-3's ``<|eot_id|>``): EOS is never
  doubled.
* ``response_mask`` is True on the response tokens and the final EOS; with ``all_tokens=True``
  it is True everywhere (noise and loss over the whole sequence).
* Too long (``len(ids) > max_length``): :func:`format_instruction` RAISES
  :class:`~diffusionlm.data.blocks.SequenceTooLong`; :func:`format_instructions` raises too by
  default or, with ``on_long="skip"``, leaves the example out and reports its index in
  ``skipped``. Nothing is truncated.
* :class:`InstructionCollator` right-pads a batch to a common length (the longest example, or a
  fixed ``length``) with ``pad_id``; ``attention`` is True on real tokens; padded positions are
  not response unless ``pad_as_response=True``. The LAD recipe (pad with EOS to 256, the padding
  EOS trained as part of the response so the model learns where answers end) is
  ``InstructionCollator.lad(tokenizer, length=256)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .blocks import SequenceTooLong
from .tokenizers import as_tokenizer

__all__ = [
    "format_instruction",
    "format_instructions",
    "templated_prompt",
    "InstructionCollator",
    "FormattedInstructions",
    "SequenceTooLong",
]


def _messages(prompt: str, system: Optional[str]) -> List[Dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    msgs.append({"role": "user", "content": prompt})
    return msgs


def _template_of(tok: Any, chat_template: Union[bool, str]) -> Optional[Dict[str, Any]]:
    """kwargs for ``apply_chat_template`` when a template is to be used, else None."""
    if chat_template is False or chat_template is None:
        return None
    hf = getattr(tok, "hf", None)
    if isinstance(chat_template, str):
        if hf is None:
            raise ValueError("a chat template string needs a Hugging Face tokenizer")
        return {"chat_template": chat_template}
    if hf is not None and getattr(hf, "chat_template", None):
        return {}
    return None


def templated_prompt(
    tokenizer: Any, prompt: str, chat_template: Union[bool, str] = True, system: Optional[str] = None
) -> str:
    """The prompt text as the model sees it: templated with the generation prompt, or as is."""
    tok = as_tokenizer(tokenizer)
    kw = _template_of(tok, chat_template)
    if kw is None:
        return prompt
    return tok.hf.apply_chat_template(_messages(prompt, system), tokenize=False, add_generation_prompt=True, **kw)


def format_instruction(
    tokenizer: Any,
    prompt: str,
    response: str,
    chat_template: Union[bool, str] = True,
    max_length: Optional[int] = None,
    all_tokens: bool = False,
    system: Optional[str] = None,
) -> Tuple[Tensor, Tensor]:
    """``(input_ids [n] long, response_mask [n] bool)`` for one prompt / response pair."""
    tok = as_tokenizer(tokenizer)
    kw = _template_of(tok, chat_template)
    if kw is None:
        prompt_ids = tok.encode(prompt)
        resp_ids = tok.encode(response)
    else:
        msgs = _messages(prompt, system)
        p_text = tok.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
        c_text = tok.hf.apply_chat_template(
            msgs + [{"role": "assistant", "content": response}], tokenize=False, **kw
        )
        if not c_text.startswith(p_text):
            raise ValueError(
                "the chat template's conversation text does not start with its templated prompt "
                f"(prompt ends {p_text[-40:]!r}, conversation continues {c_text[len(p_text) - 40:len(p_text) + 20]!r}); "
                "cannot tell where the response starts"
            )
        prompt_ids = tok.encode(p_text)
        resp_ids = tok.encode(c_text[len(p_text):])
    ids = list(prompt_ids) + list(resp_ids)
    if not ids or ids[-1] != tok.eos_id:
        ids.append(tok.eos_id)
    if max_length is not None and len(ids) > max_length:
        raise SequenceTooLong(
            f"instruction example has {len(ids)} tokens ({len(prompt_ids)} prompt), more than "
            f"max_length {max_length}; examples are never truncated (format_instructions(..., on_long='skip') "
            "leaves such examples out)"
        )
    input_ids = torch.tensor(ids, dtype=torch.long)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[len(prompt_ids):] = True
    if all_tokens:
        mask[:] = True
    return input_ids, mask


@dataclass
class FormattedInstructions:
    """Formatted examples, plus the indices of the inputs left out for being too long."""

    examples: List[Tuple[Tensor, Tensor]]
    skipped: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        return self.examples[i]


def format_instructions(
    tokenizer: Any,
    pairs: Iterable[Union[Tuple[str, str], Mapping[str, Any]]],
    max_length: Optional[int] = None,
    on_long: str = "raise",
    prompt_field: str = "prompt",
    response_field: str = "response",
    **kwargs: Any,
) -> FormattedInstructions:
    """Format many examples: ``(prompt, response)`` tuples or dicts with ``prompt_field`` /
    ``response_field`` (e.g. GSM8K: ``prompt_field="question", response_field="answer"``).
    ``on_long``: "raise" (default) or "skip" (counted in ``skipped``)."""
    if on_long not in ("raise", "skip"):
        raise ValueError(f"on_long must be 'raise' or 'skip', got {on_long!r}")
    tok = as_tokenizer(tokenizer)
    out = FormattedInstructions(examples=[])
    for i, ex in enumerate(pairs):
        if isinstance(ex, Mapping):
            prompt, response = ex[prompt_field], ex[response_field]
        else:
            prompt, response = ex
        try:
            out.examples.append(format_instruction(tok, prompt, response, max_length=max_length, **kwargs))
        except SequenceTooLong:
            if on_long == "raise":
                raise
            out.skipped.append(i)
    return out


class InstructionCollator:
    """Pad ``(input_ids, response_mask)`` examples into a batch dict: ``input_ids`` [B, L],
    ``response_mask`` [B, L], ``attention`` [B, L] (True on real tokens, or everywhere with
    ``pad_as_response``), ``lengths`` [B]. ``length=None``: the longest example; a fixed
    ``length`` shorter than an example raises SequenceTooLong."""

    def __init__(self, pad_id: Any, length: Optional[int] = None, pad_as_response: bool = False):
        if not isinstance(pad_id, int):
            pad_id = as_tokenizer(pad_id).pad_id
        self.pad_id, self.length, self.pad_as_response = int(pad_id), length, bool(pad_as_response)

    @classmethod
    def lad(cls, tokenizer: Any, length: int = 256) -> "InstructionCollator":
        """The LAD paper's batches: EOS padding to ``length``, padding trained as response."""
        return cls(as_tokenizer(tokenizer).eos_id, length=length, pad_as_response=True)

    def __call__(self, examples: Sequence[Tuple[Tensor, Tensor]]) -> Dict[str, Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        lengths = torch.tensor([len(ids) for ids, _ in examples], dtype=torch.long)
        L = int(lengths.max()) if self.length is None else int(self.length)
        if int(lengths.max()) > L:
            i = int(lengths.argmax())
            raise SequenceTooLong(f"example {i} has {int(lengths[i])} tokens, more than the batch length {L}")
        B = len(examples)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        resp = torch.full((B, L), self.pad_as_response, dtype=torch.bool)
        att = torch.full((B, L), self.pad_as_response, dtype=torch.bool)
        for b, (x, m) in enumerate(examples):
            n = len(x)
            ids[b, :n] = torch.as_tensor(x, dtype=torch.long)
            resp[b, :n] = torch.as_tensor(m, dtype=torch.bool)
            att[b, :n] = True
        return {"input_ids": ids, "response_mask": resp, "attention": att, "lengths": lengths}
