"""Installs the ppow_jax package: `pip install -e .` (dependencies pinned in requirements.txt)."""

import pathlib

from setuptools import find_packages, setup

here = pathlib.Path(__file__).parent
requirements = [
    line.split("#")[0].strip() for line in (here / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="ppow_jax",
    version="0.1.0",
    description="PPOW: window-level policy optimization of speculative-decoding drafters, in JAX/Flax",
    packages=find_packages(include=["ppow_jax", "ppow_jax.*"]),
    # Evaluation prompts and the tiny stories260k model (ppow_jax/assets/README.md).
    package_data={"ppow_jax.assets": ["README.md", "*/LICENSE", "*/*.json", "*/*.jsonl",
                                      "*/*.jsonl.gz", "*/*.safetensors"],
                  # Built on first use (ppow_jax/models/cpu_kernels.py).
                  "ppow_jax.models": ["cpu_matvec.cc"]},
    python_requires=">=3.11",
    install_requires=requirements,
)
