"""Chinese-LLaMA's additions: a vocabulary extended for Chinese, Chinese text, the embedding
resize, and the recipe that puts them together.

    vocab_sentencepiece.py  read, merge (the paper's merge), write and train SentencePiece
                            models
    vocab_bpe.py            extend a byte-level BPE vocabulary by continuing BPE training on
                            Chinese text
    corpus.py               the Chinese corpus from the data mirror, and its fixed training /
                            held-out split
    resize.py               growing embed_tokens / lm_head to an extended vocabulary, and how
                            the new rows start
    bits_per_char.py        held-out bits per character, the recipe's measure
    defaults.py             the recipe's defaults (numbers only: the tools' --help reads them)
    recipe.py               the recipe as a pipeline: RecipeConfig, run_recipe

Imports: only the subpackages below it (`llama_np.training`, `llama_np.checkpoint`,
`llama_np.llama`, `llama_np.tokenizer`, `llama_np.files`, `llama_np.quant`, …); not the
tools.
"""
