"""Which type each tensor of a K-quant or 5-bit file gets: llama.cpp's mixes.

A llama.cpp file type ("Q4_K_M") is not one tensor type but a recipe (src/llama-quant.cpp,
`llama_tensor_get_type`). It starts from the mix's base type and, for a LLaMA, changes it
for the tensors whose errors cost most:

    the output head (or the embedding, when tied)   Q6_K; Q8_0 if its rows do not fit the base type
    attn_v                                          more bits in some layers (table below)
    ffn_down                                        more bits in some layers
    attn_output                                     more bits for Q2_K and Q3_K_M/L

    mix     base   attn_v                         ffn_down                       attn_output
    Q2_K    Q2_K   Q3_K (Q4_K if GQA ≥ 4 heads)   Q3_K                           Q3_K
    Q3_K_S  Q3_K   –                              –                              –
    Q3_K_M  Q3_K   Q5_K in layers 0-1, else Q4_K  Q5_K below n/16, else Q4_K     Q4_K
    Q3_K_L  Q3_K   Q5_K                           Q5_K                           Q5_K
    Q4_K_S  Q4_K   Q5_K in layers 0-3             Q5_K below n/8                 –
    Q4_K_M  Q4_K   Q6_K where more bits help      Q6_K where more bits help      –
    Q5_K_S  Q5_K   –                              –                              –
    Q5_K_M  Q5_K   Q6_K where more bits help      Q6_K where more bits help      –
    Q6_K, Q5_0, Q5_1: the base type everywhere but the head.

"Where more bits help" (`use_more_bits`) is the first and last eighth of the layers and every
third layer between. A 70B LLaMA (80 layers, grouped-query attention) also lifts a Q3_K or
Q4_K attn_v to Q5_K.

Last comes the fallback: a K-quant needs rows that are whole 256-weight super-blocks, and a
tensor whose rows are not gets a 32-weight type instead (Q2_K, Q3_K → Q4_0, Q4_K → Q5_0,
Q5_K → Q5_1, Q6_K → Q8_0), or F16 if even 32 does not divide them. SmolLM2-135M's width
576 is not a multiple of 256, so its "Q4_K_M" is mostly Q5_0, with Q4_K/Q6_K ffn_down
(whose rows are 1536 wide) and a Q8_0 embedding.

Norms (1-D) stay F32.
"""
from llama_np.checkpoint.gguf import gguf_name
from llama_np.llama.weights import expected_shapes
from llama_np.quant import FORMATS

# --type → (llama_ftype of llama.h, the mix's base tensor type)
MIXES = {
    "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"), "Q2_K": (10, "Q2_K"),
    "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"), "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"),
}
# a K-quant whose rows do not fit takes this 32-weight type (llama-quant.cpp tensor_type_fallback)
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def use_more_bits(layer, n_layers):
    """llama.cpp's choice of layers for a promoted attn_v / ffn_down: the first and last
    eighth, and every third layer in between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def fits(cols, type_name):
    return cols % FORMATS[type_name].block_weights == 0


def fallback(cols, type_name):
    """The type a tensor with rows of `cols` weights really gets instead of `type_name`."""
    if fits(cols, type_name):
        return type_name
    smaller = FALLBACK.get(type_name, type_name)
    return smaller if fits(cols, smaller) else "F16"


def _promoted(mix, base, role, layer, config):
    """The type llama.cpp's mix `mix` gives a matrix of `role` in layer `layer` (before the
    fallback); role is the GGUF name's part: "attn_v", "ffn_down", "attn_output", …"""
    n_layers = config.num_hidden_layers
    gqa = config.num_attention_heads // config.num_key_value_heads
    is_70b = n_layers == 80 and gqa > 1          # llama.cpp's LLM_TYPE_70B for a LLaMA
    if role == "attn_v":
        promoted = {"Q2_K": "Q4_K" if gqa >= 4 else "Q3_K",
                    "Q3_K_M": "Q5_K" if layer < 2 else "Q4_K",
                    "Q3_K_L": "Q5_K",
                    "Q4_K_M": "Q6_K" if use_more_bits(layer, n_layers) else base,
                    "Q5_K_M": "Q6_K" if use_more_bits(layer, n_layers) else base,
                    "Q4_K_S": "Q5_K" if layer < 4 else base}.get(mix, base)
        return "Q5_K" if is_70b and promoted in ("Q3_K", "Q4_K") else promoted
    if role == "ffn_down":
        return {"Q2_K": "Q3_K",
                "Q3_K_M": "Q5_K" if layer < n_layers // 16 else "Q4_K",
                "Q3_K_L": "Q5_K",
                "Q4_K_M": "Q6_K" if use_more_bits(layer, n_layers) else base,
                "Q5_K_M": "Q6_K" if use_more_bits(layer, n_layers) else base,
                "Q4_K_S": "Q5_K" if layer < n_layers // 8 else base}.get(mix, base)
    if role == "attn_output":
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(mix, base)
    return base


def mix_tensor_types(config, mix):
    """Hugging Face tensor name → the type llama.cpp's quantizer writes it as for the file
    type `mix` (a key of MIXES) from an F32 or F16 source."""
    base = MIXES[mix][1]
    types = {}
    for name, shape in expected_shapes(config).items():
        cols = shape[-1]
        if len(shape) == 1:
            types[name] = "F32"
        elif name == "lm_head.weight" or (name == "model.embed_tokens.weight" and config.tie_word_embeddings):
            types[name] = fallback(cols, "Q6_K" if fits(cols, base) else "Q8_0")
        elif name == "model.embed_tokens.weight":
            types[name] = fallback(cols, base)
        else:
            _, layer, role, _ = gguf_name(name).split(".")          # blk.{i}.{role}.weight
            types[name] = fallback(cols, _promoted(mix, base, role, int(layer), config))
    return types
