"""llama4_jax: Llama 4 (Scout / Maverick / Behemoth-class) in pure-functional JAX/Flax, with its training program."""

from setuptools import find_packages, setup

# Bounds: the versions this project is tested with on Python 3.11 (lower) up to the next release line (upper).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "seqio>=0.0.20,<0.1",
    "ml-collections>=1.1.0,<2",
    "tensorflow-datasets>=4.9.10,<5",
    "absl-py>=2.5,<3",
    "numpy>=2.0,<3",
    "ml_dtypes>=0.5,<1",
    "tiktoken>=0.14,<1",
    "regex>=2024.1",
    "tensorboardX>=2.6,<3",
    "importlib_resources>=6",  # tensorflow-datasets builders import it without declaring it
    "pillow>=12,<14",  # image loading and resizing (llama4_jax/data/image.py)
    "matplotlib>=3.10,<4",  # coordinate-check and sweep plots (llama4_jax/coord_check.py, llama4_jax/sweep.py)
    "pyarrow>=26.0,<27",  # the parquet releases of MMMU, MMMU-Pro, MathVista, MMLU-Pro (llama4_jax/eval)
]

EXTRAS = {
    # pytest-xdist: the suite runs in parallel workers (one per core, at most 4; tests/conftest.py), each test file
    # in one worker so that its tests share their compiled programs.
    "test": ["pytest>=9.0,<10", "pytest-xdist>=3.8,<4"],
    # Parity oracle. torch==2.13.0 is the CPU build on the project machines; transformers 5.24.0 breaks Llama 4's
    # vision forward, so stay on 5.23.0.
    "torch": ["torch==2.13.0", "transformers==5.23.0", "safetensors>=0.8,<0.9"],
}

setup(
    name="llama4_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["llama4_jax", "llama4_jax.*", "pallas_kernels", "pallas_kernels.*"]),
    package_data={"llama4_jax.data": ["assets/*"], "llama4_jax.eval": ["samples/**/*"]},
    include_package_data=True,
    python_requires=">=3.11,<3.13",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
