"""Tokenizers: text ↔ ids, chat templates, and the bytes of a SentencePiece model file.

    tokenizers.py  `Tokenizer` over SentencePiece and byte-level BPE, built from tokenizer
                   files or from GGUF metadata handed over as a dict
    templates.py   chat templates: a conversation → the one prompt string a model continues
    sentencepiece_model.py  a SentencePiece `.model` file's ModelProto: its field numbers,
                   the piece list and the trainer / normalizer settings, parsed and written
    protowire.py   the protobuf wire format, enough to read and write a SentencePiece
                   `.model` file

This package never opens a GGUF file itself: `llama_np.checkpoint` opens files and
assembles a model with its tokenizer (`load_model`, `load_tokenizer`).

Imports: `llama_np.files`, `llama_np.ops`, `llama_np.quant` at most (the level below it);
not `llama_np.kernels`, which sits on the same level.
"""
