"""The paper's decoding settings (Chinese-LLaMA-Alpaca `inference_hf.py`): temperature 0.2,
top-k 40, top-p 0.9, repetition penalty 1.3, at most 512 new tokens in a 2048-token context.

The defaults of `sampling.SamplingSettings` and of the tools' sampling flags
(`llama_np.cli.common.add_sampling_args`). Numbers only, no imports: a tool's `--help`
reads them before NumPy is imported.
"""
PAPER_TEMPERATURE = 0.2
PAPER_TOP_K = 40
PAPER_TOP_P = 0.9
PAPER_REPETITION_PENALTY = 1.3
PAPER_MAX_NEW_TOKENS = 512
PAPER_CONTEXT = 2048
