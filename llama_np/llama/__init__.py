"""LLaMA itself: its configuration, its block (written once, backward beside it), the model
with a KV cache, LoRA adapters beside its weights, and generating text with it.

    config.py           LlamaConfig, from a Hugging Face config.json or GGUF metadata
    rope_scaling.py     RoPE scaling (linear, dynamic NTK, llama3, YaRN): frequencies, attention factor
    weights.py          the tensors' Hugging Face names and shapes, and their check
    model.py            block_forward / block_backward, and `Llama` (start reading here)
    inference_layer.py  the block's inference use: backend products, KV-cache attention
    kv_cache.py         KVCache
    adapter.py          LoraConfig, Adapter, merging
    decoding_defaults.py  the paper's decoding settings (numbers only: the tools' --help)
    sampling.py         the samplers
    generation.py       the generation loop, streaming, stop strings
    batch.py            decode_step: one decoding step for several sequences at once
    conversation.py     a multi-turn chat over one cache

Imports: `llama_np.ops`, `llama_np.quant`, `llama_np.kernels`, `llama_np.tokenizer`
(chat templates). Reading checkpoints is `llama_np.checkpoint`, above this package.
"""
