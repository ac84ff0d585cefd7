"""The tensors of a LLaMA checkpoint: their Hugging Face names, their shapes, and the check
that a checkpoint holds them all."""
from llama_np.llama.config import ConfigError, LlamaConfig


def layer_weight_names(i):
    """Hugging Face names of the tensors of block i."""
    p = f"model.layers.{i}."
    return {
        "attn_norm": p + "input_layernorm.weight",
        "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight",
        "o": p + "self_attn.o_proj.weight",
        "mlp_norm": p + "post_attention_layernorm.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


def expected_shapes(config: LlamaConfig):
    """Every tensor a LLaMA checkpoint must hold, with its shape (lm_head only if untied)."""
    D, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    q_out = config.num_attention_heads * config.head_dim
    kv_out = config.num_key_value_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i in range(config.num_hidden_layers):
        n = layer_weight_names(i)
        shapes.update({
            n["attn_norm"]: (D,), n["mlp_norm"]: (D,),
            n["q"]: (q_out, D), n["k"]: (kv_out, D), n["v"]: (kv_out, D), n["o"]: (D, q_out),
            n["gate"]: (F, D), n["up"]: (F, D), n["down"]: (D, F),
        })
    return shapes


def check_weights(config, weights, source="checkpoint"):
    """Raise ConfigError (a ValueError) naming the first missing or misshapen tensor."""
    for name, shape in expected_shapes(config).items():
        if name not in weights:
            raise ConfigError(f"{source}: tensor {name!r} is missing")
        if tuple(weights[name].shape) != shape:
            raise ConfigError(f"{source}: tensor {name!r} has shape {tuple(weights[name].shape)}, "
                             f"config says {shape}")
