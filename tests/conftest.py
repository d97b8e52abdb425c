"""Suite-wide settings. Tiny models run fastest single-threaded: with 2 threads on a shared
2-core machine, small kernels spend most of their time synchronising threads."""
import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("DIFFUSIONLM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
