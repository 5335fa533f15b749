from setuptools import find_packages, setup

# torch is bounded below only: an already installed build (CPU or CUDA) satisfies it,
# so installing ctal-ds never replaces the user's torch.
INSTALL_REQUIRES = [
    "torch>=2.1",
    "deepspeed>=0.14",
    "webdataset>=0.2.86",
    "librosa>=0.10",
    "soundfile>=0.12",
    "tokenizers>=0.15",
    "mlflow>=2.10",
    "numpy>=1.24",
    "tqdm>=4.66",
    "matplotlib>=3.7",
    "scikit-learn>=1.3",
    "espeakng-loader>=0.2.4",
    # CTALProcessor computes features with one BLAS thread, as shard-building workers do.
    "threadpoolctl>=3.1",
    # launch/embed.py writes .parquet.
    "pyarrow>=12",
]

EXTRAS_REQUIRE = {
    "dev": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "pytest-timeout>=2.2",
        "ruff>=0.5",
        # The fused attention kernel is written in Triton; on CPU it is tested under
        # the Triton interpreter (TRITON_INTERPRET=1).
        "triton>=3.0",
        # benchmarks/model.py compares against a model assembled from RoBERTa modules.
        "transformers>=4.40",
        # launch/ui_check.py (make demo) and its test drive Debian's headless Chromium.
        "selenium>=4.11",
        # MLflow's system metrics read psutil; tests/model/test_mlflow_model.py checks them.
        "psutil>=5.9",
        # tests/data/test_lhotse.py writes manifests with lhotse's own API.
        "lhotse>=1.20",
    ],
    # Not needed to read lhotse manifests (ctal_ds.data.corpora parses their JSON); for
    # writing or inspecting them with lhotse beside ctal-ds.
    "lhotse": ["lhotse>=1.20"],
    # Optional fast paths. torchaudio is not required: ctal_ds.data.features has a
    # pure-torch backend, and PyPI's torchaudio wheels are CUDA builds pinned to
    # older torch releases. NVIDIA apex builds from source only (the PyPI package
    # named "apex" is unrelated); DeepSpeed's FusedAdam and torch's fused kernels
    # cover what ctal-ds would take from it.
    "torchaudio": ["torchaudio>=2.1"],
}

setup(
    name="ctal-ds",
    version="0.1.0",
    description="DeepSpeed pre-training system for CTAL audio-and-language Transformers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ctal_ds", "ctal_ds.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    include_package_data=True,
)
