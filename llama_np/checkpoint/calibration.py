"""What quantizing with calibration needs from the model: H = Xᵀ X of each matrix's inputs.

GPTQ (`llama_np.quant.gptq`) rounds a weight matrix W so that X Wᵀ changes least over
inputs X that the matrix really sees; all it needs of X is H = Xᵀ X [in, in]. Here the
float model reads a calibration text, window by window, and every product it makes adds
its input rows x [T, in] to the H of its weight:

    H_W += xᵀ x          (a window's product in float32, the sum over windows in float64)

q, k and v read the same input, and so do gate and up, so their H are equal: computed once,
kept under each name. The inputs are those of the unquantized model: every matrix is
rounded against what the float model feeds it.
"""
import numpy as np

from llama_np.files.text import read_utf8
from llama_np.llama.weights import layer_weight_names

CALIBRATION_CTX = 512          # tokens per window (each from an empty cache)
CALIBRATION_TOKENS = 16_384    # read at most this much of the text
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def projection_names(config):
    """The weight names of every layer's PROJECTIONS: the matrices calibration sees the inputs of."""
    return [layer_weight_names(i)[key] for i in range(config.num_hidden_layers) for key in PROJECTIONS]


def read_calibration_text(path):
    """The text of a calibration file: UTF-8 with something in it, or a ValueError that says
    what is wrong."""
    text = read_utf8(path, ValueError, "the calibration text")
    if not text.strip():
        raise ValueError(f"{path}: the calibration text is empty")
    return text


def input_hessians(model, token_ids, ctx=CALIBRATION_CTX, max_tokens=CALIBRATION_TOKENS, progress=None):
    """{weight name: H = Σ xᵀ x float64 [in, in]} of every projection of `model` (a Llama)
    over token_ids[:max_tokens], read in windows of `ctx` tokens. `progress(n_tokens)` is
    called after each window."""
    token_ids = list(token_ids)[:max_tokens]
    if len(token_ids) < 2:
        raise ValueError(f"the calibration text has {len(token_ids)} token(s); it needs at least 2")
    names = {id(model.weights[name]): name for name in projection_names(model.config)}
    hessians = {}
    multiply = model.project
    last = {}                                  # the latest input and its xᵀ x: q, k, v share one

    def project(x, weight, lora=()):                                  # x [T, in]
        name = names.get(id(weight))
        if name is not None:
            if last.get("x") is not x:
                rows = x.reshape(-1, x.shape[-1])
                last["x"], last["xtx"] = x, (rows.T @ rows).astype(np.float64)   # [in, in]
            hessians[name] = hessians.get(name, 0.0) + last["xtx"]
        return multiply(x, weight, lora)

    model.project = project                   # this instance only, for the windows below
    try:
        for start in range(0, len(token_ids), ctx):
            window = token_ids[start:start + ctx]
            model.forward(window, model.new_cache(len(window)), last_only=True)
            if progress is not None:
                progress(len(window))
    finally:
        del model.project
    return hessians
