"""Reading and writing checkpoints: the file formats, and putting a model together from them.

    gguf_file.py        GGUF reader (metadata, tensor table, tensor bytes)
    gguf.py             a LLaMA from a GGUF file (names, Q/K un-permutation, config)
    gguf_writer.py      writing a LLaMA as GGUF (llama.cpp loads it)
    safetensors.py      Hugging Face folders: config.json + safetensors, read and write
    peft.py             PEFT LoRA adapter folders, read and write; applying them to a model

`load_model(path)` takes a GGUF file or a Hugging Face folder and returns the model and its
tokenizer; `load_tokenizer(path)` the tokenizer alone.

Imports: `llama_np.llama` (the model it builds), `llama_np.quant`, `llama_np.tokenizer`,
`llama_np.files`.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from llama_np.checkpoint.gguf import load_gguf_from
from llama_np.checkpoint.gguf_file import GGUFFile, has_gguf_magic, read_file
from llama_np.checkpoint.safetensors import load_hf
from llama_np.llama.model import Llama
from llama_np.tokenizer.tokenizers import Tokenizer, TokenizerError


def load_model(path, use_kernels=True):
    """(Llama, Tokenizer) from a `.gguf` file or a Hugging Face folder (config.json +
    safetensors + tokenizer files)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        config, weights = load_hf(path)
        tokenizer = Tokenizer.from_hf_dir(path)
    elif os.path.exists(path):
        # Three things at once, one wait instead of three: a thread reads the file's ~100 MB
        # into memory (the copy out of the page cache runs with the GIL released) while this
        # one parses the header, and a second thread builds the tokenizer from it. An error
        # in the weights still comes first, as it would one after the other. The read starts
        # only for a file that is a GGUF, lest a wrong path be read whole before the error.
        with ThreadPoolExecutor(max_workers=2) as pool:
            reading = pool.submit(read_file, path) if has_gguf_magic(path) else None
            gguf = GGUFFile(path)
            tokenizing = pool.submit(Tokenizer.from_gguf_metadata, gguf.metadata, source=path)
            gguf.read_into_memory(reading.result())
            config, weights, _ = load_gguf_from(gguf)
            tokenizer = tokenizing.result()
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    return Llama(config, weights, use_kernels=use_kernels), tokenizer


def load_tokenizer(path):
    """The tokenizer at `path`: a GGUF model file, a SentencePiece `.model` file, or a
    Hugging Face model folder. Raises TokenizerError (a ValueError) naming the path if
    there is none."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return Tokenizer.from_hf_dir(path)
    if not os.path.isfile(path):
        raise TokenizerError(f"{path}: no such file or folder")
    if has_gguf_magic(path):
        return Tokenizer.from_gguf_metadata(GGUFFile(path).metadata, source=path)
    return Tokenizer.from_sentencepiece(path)
