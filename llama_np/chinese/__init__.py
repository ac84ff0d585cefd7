"""Chinese-LLaMA's additions: a vocabulary extended for Chinese, and Chinese text.

    vocab_sentencepiece.py  read, merge (the paper's merge), write and train SentencePiece
                            models
    vocab_bpe.py            extend a byte-level BPE vocabulary by continuing BPE training on
                            Chinese text
    corpus.py               the Chinese corpus from the data mirror, and its fixed training /
                            held-out split

Imports: only the subpackages below it (`llama_np.training`, `llama_np.checkpoint`,
`llama_np.llama`, `llama_np.tokenizer`, `llama_np.files`, …); not the tools.
"""
