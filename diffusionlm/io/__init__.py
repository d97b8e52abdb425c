"""Files and the Hub: safe file primitives (:mod:`.safeio`: atomic writes, checksummed
safetensors, never a pickle), the saved-composition folder and the one loader of every kind of
model (:mod:`.hub`), pretrained weights fetched by name (:mod:`.fetch`).

This package's __init__ imports nothing: the file primitives are used by every layer (a backbone
saves its weights with them), while the Hub client and the loader sit above the composition.
"""
