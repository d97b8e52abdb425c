"""diffusionlm: discrete diffusion language models, one composable toolkit.

torch is pinned to the tested version: a loose requirement with no torch installed
pulls the multi-gigabyte CUDA build. The README's set-up installs it first.
"""
from setuptools import find_packages, setup

setup(
    name="diffusionlm",
    version="0.1.0",
    description="Corruption processes, hyperschedules, backbones and samplers for discrete diffusion LMs",
    python_requires=">=3.10",
    packages=find_packages(include=["diffusionlm", "diffusionlm.*"]),
    # the default comparison spec, and the shipped models (fetch.SHIPPED: a LoRA adapter, its card and tokenizer)
    package_data={"diffusionlm": ["resources/*.json", "resources/models/*/*", "resources/models/*/*/*"]},
    install_requires=[
        "torch==2.13.0",
        "transformers>=5.0",
        "datasets>=3.0",
        "einops>=0.8",
        "scipy>=1.11",
        "huggingface_hub>=0.24",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tokenizers>=0.20",
        "numpy>=1.26",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "gradio>=5", "playwright>=1.40", "lm-eval>=0.4", "gguf>=0.10", "peft>=0.17"],
        # LoRA adapters on Hugging Face backbones (the LAD recipe); imported only where LoRA is used
        "lora": ["peft>=0.17"],
        # reading .gguf weights (diffusionlm fetch smollm2 converts them once; the converted
        # safetensors folder loads without it)
        "gguf": ["gguf>=0.10"],
        "demo": ["gradio>=5"],
        "gpu": ["flash-attn"],
        "eval": ["mauve-text", "lm-eval"],
        "logging": ["wandb", "tensorboard"],
    },
    entry_points={
        "console_scripts": ["diffusionlm=diffusionlm.cli:main"],
        # lm-eval releases after 0.4.13 discover models here (0.4.13 itself: `diffusionlm lm-eval`)
        "lm_eval.models": ["diffusionlm=diffusionlm.eval.lm_eval_adapter:DiffusionLMEval"],
    },
)
