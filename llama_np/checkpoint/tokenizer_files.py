"""Writing a tokenizer's files from GGUF tokenizer metadata: the Hugging Face folder
(tokenizer.json, tokenizer_config.json) and a vocabulary-only GGUF, as llama.cpp keeps in
models/ggml-vocab-*.gguf. Byte-level BPE tokenizers (the default model's)."""
import json
import os

from llama_np.files.atomic import atomic_path, atomic_write_text
from llama_np.tokenizer.tokenizers import Tokenizer, hf_backend


def save_hf_tokenizer(metadata, folder):
    """Write the tokenizer of GGUF `metadata` as a Hugging Face tokenizer folder:
    `tokenizer.json` (vocabulary, merges, pre-tokenizer, decoder, special tokens, as HF
    `tokenizers` serializes them) and `tokenizer_config.json` (BOS/EOS/pad/unk, whether to
    add BOS, the chat template). llama_np's `load_tokenizer(folder)`, `tokenizers` and
    transformers' `AutoTokenizer` all read it. Each file is written atomically."""
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, "tokenizer.json")) as tmp:
        hf_backend(tokenizer).save(tmp)
    tokens = metadata["tokenizer.ggml.tokens"]

    def token_text(key):
        token_id = metadata.get(key)
        return None if token_id is None else tokens[token_id]

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token_text("tokenizer.ggml.bos_token_id"),
        "eos_token": token_text("tokenizer.ggml.eos_token_id"),
        "pad_token": token_text("tokenizer.ggml.padding_token_id"),
        "unk_token": token_text("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": tokenizer.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # decode must give back the exact text
    }
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    atomic_write_text(os.path.join(folder, "tokenizer_config.json"),
                      json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def write_tokenizer_gguf(metadata, path):
    """Write the `general.architecture` and `tokenizer.*` entries of GGUF `metadata` as a
    GGUF file with no tensors — a vocabulary-only GGUF, like llama.cpp's
    models/ggml-vocab-*.gguf — atomically. `llama_np.checkpoint.load_tokenizer(path)` reads it."""
    import gguf

    keys = [key for key in metadata if key.startswith("tokenizer.")]
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=metadata.get("general.architecture", "llama"))
        for key in keys:
            value_type, element_type = _gguf_value_type(key, metadata[key])
            writer.add_key_value(key, metadata[key], value_type, sub_type=element_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _gguf_value_type(key, value):
    """(value type, element type or None) for a tokenizer entry, as llama.cpp writes them:
    token ids and counts u32, token types i32, scores f32."""
    from gguf import GGUFValueType

    def scalar_type(x):
        if isinstance(x, bool):
            return GGUFValueType.BOOL
        if isinstance(x, int):
            return GGUFValueType.INT32 if key.endswith("token_type") else GGUFValueType.UINT32
        if isinstance(x, float):
            return GGUFValueType.FLOAT32
        if isinstance(x, str):
            return GGUFValueType.STRING
        raise VocabularyError(f"GGUF metadata {key!r}: cannot write a value of type {type(x).__name__}")

    if isinstance(value, (list, tuple)):
        return GGUFValueType.ARRAY, scalar_type(value[0]) if value else GGUFValueType.STRING
    return scalar_type(value), None
