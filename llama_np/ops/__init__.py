"""The operations a LLaMA is made of, as pure NumPy functions: the reference implementation.

One file per operation, each `*_forward` beside its `*_backward`. A forward returns its
output and a `cache`: exactly what the matching backward needs. Inference ignores the
cache; training keeps it on a tape. The C kernels (`llama_np.kernels`) are tested against
these functions, which are also their documentation.

Shapes: T tokens in this call, S tokens attended to (cached + new), D model width,
H query heads, H_kv key/value heads, hd head dim, F SwiGLU width, V vocabulary, r LoRA rank.

Imports: NumPy only. Everything else in llama_np builds on this package.
"""
from llama_np.ops.attention import attention_backward, attention_forward, softmax
from llama_np.ops.cross_entropy import (IGNORE_INDEX, causal_lm_targets, count_targets, cross_entropy_backward,
                                        cross_entropy_forward)
from llama_np.ops.embedding import embedding_backward, embedding_forward
from llama_np.ops.linear import linear_backward, linear_forward
from llama_np.ops.lora import DROPOUT_LEVELS, lora_backward, lora_forward
from llama_np.ops.rmsnorm import rmsnorm_backward, rmsnorm_forward
from llama_np.ops.rope import rope_backward, rope_cos_sin, rope_forward, rope_inverse_frequencies
from llama_np.ops.swiglu import silu, swiglu_backward, swiglu_forward
