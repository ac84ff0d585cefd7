"""Reading and writing checkpoints: `load_model(path)` takes a GGUF file or a Hugging Face
folder and returns the model and its tokenizer."""
import os


def load_model(path, use_kernels=True):
    """(Llama, Tokenizer) from a `.gguf` file or a Hugging Face folder (config.json +
    safetensors + tokenizer files)."""
    from llama_np.llama.model import Llama
    from llama_np.tokenizer.tokenizers import Tokenizer

    path = os.fspath(path)
    if os.path.isdir(path):
        from llama_np.checkpoint.safetensors import load_hf
        config, weights = load_hf(path)
        tokenizer = Tokenizer.from_hf_dir(path)
    elif os.path.exists(path):
        from llama_np.checkpoint.gguf import load_gguf
        config, weights, gguf = load_gguf(path)
        tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata, source=path)
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    return Llama(config, weights, use_kernels=use_kernels), tokenizer
