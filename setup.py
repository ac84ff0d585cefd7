"""Install llama_np and build its C kernels (cffi, see kernels/build.py)."""
from setuptools import find_packages, setup

setup(
    name="llama_np",
    version="0.1.0",
    description="A readable NumPy re-implementation of Chinese-LLaMA/Alpaca: "
                "inference, LoRA training and 4-bit RTN quantization on a CPU",
    packages=find_packages(include=["llama_np", "llama_np.*"]),
    package_data={"llama_np.training": ["export_files/*.txt"],   # what training.export writes
                  "llama_np.serving": ["static/*.html"]},         # the chat page of `python -m llama_np.serve`
    python_requires=">=3.10",
    setup_requires=["cffi>=1.16"],
    cffi_modules=["kernels/build.py:ffibuilder"],
    install_requires=[
        "numpy>=1.26",
        "cffi>=1.16",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "jinja2>=3.1",
        "gguf>=0.17",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # `python -m llama_np.serve`: the ASGI stack its HTTP side runs on
        "serve": ["starlette>=0.37", "uvicorn>=0.30"],
        # Independent oracles for the tests (never needed to run llama_np) and the
        # notebook runner. torch 2.13.0 is the CPU build this kind of machine carries.
        "test": [
            "pytest>=8",
            "torch==2.13.0",
            "transformers==5.24.0",
            "peft==0.21.2",
            # the export's ZeRO-2 config, checked by DeepSpeed itself (tests/test_export.py); a
            # source package that builds in seconds without a compiler (no ops, torch left as is)
            "deepspeed==0.19.8",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            # the server's tests: its stack, the openai client as the oracle, httpx for raw requests
            "starlette>=0.37",
            "uvicorn>=0.30",
            "openai>=1.40",
            "httpx>=0.27",
            # the benchmarks name the BLAS kernels NumPy multiplies with (benchmarks/bench_env.py)
            "threadpoolctl>=3.5",
        ],
    },
)
