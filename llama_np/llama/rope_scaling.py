"""RoPE scaling: the rotation frequencies of a LLaMA whose context was stretched after pre-training.

RoPE turns pair i of a head by pos · ω_i, ω_i = θ^(-2i/hd). Beyond the N positions seen in
pre-training the angles are ones the model never saw; each scaling method changes the
frequencies so that a longer context maps onto familiar angles. The formulas are those of
transformers' `modeling_rope_utils.py`, step for step and in float32 as it computes them:

    linear    ω_i / s                                   position interpolation (Chen et al. 2023)
    dynamic   θ' = θ · (s·n/N − (s − 1))^(hd/(hd−2))    NTK-aware; n = the sequence length, > N
    llama3    ω_i / s for wavelengths > N/low, ω_i for < N/high, smoothly between (Llama 3.1)
    yarn      the same blend, by rotations within N (Peng et al. 2023); cos and sin × 0.1·ln s + 1

(s the factor; N is `original_max_position_embeddings`, for dynamic `max_position_embeddings`.)
A GGUF file holds llama3 as `rope_freqs.weight`, one divisor per frequency (ω_i / f_i); that
form is the type "freq_factors" here.

`LlamaConfig.rope_scaling` holds the parameters as a dict in transformers' names, checked by
`rope_scaling_from_hf` or `rope_scaling_from_gguf`; `rotation(config, seq_len)` turns them into
what every RoPE call of one forward pass takes.
"""
import math
from typing import NamedTuple

import numpy as np

from llama_np import ops

TYPES = ("linear", "dynamic", "llama3", "yarn", "freq_factors")
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0       # transformers' (and the paper's) defaults

# The parameters of each type: required, then optional (transformers' names).
_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
             "yarn": ("factor", "original_max_position_embeddings"), "freq_factors": ("freq_factors",)}
_OPTIONAL = {"yarn": ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")}

# GGUF metadata keys (llama.cpp's gguf-py Keys.Rope), after `{arch}.rope.scaling.`
GGUF_TYPES = {"none": None, "linear": "linear", "yarn": "yarn",
              "dynamic": "dynamic"}   # "dynamic": llama_np's own; llama.cpp has no dynamic NTK
GGUF_YARN_KEYS = {"yarn_attn_factor": "attention_factor", "yarn_beta_fast": "beta_fast",
                  "yarn_beta_slow": "beta_slow"}
GGUF_FREQ_FACTORS = "rope_freqs.weight"   # the llama3 divisors, a tensor of hd/2 floats


class RopeScalingError(ValueError):
    """RoPE scaling parameters llama_np cannot compute (an unknown type, a missing factor)."""


class Rotation(NamedTuple):
    """What the RoPE of one forward pass takes (`ops.rope_forward(x, positions, *rotation)`)."""
    theta: float
    inv_freq: np.ndarray | None = None    # [hd/2] float32; None: θ^(-2i/hd), unscaled
    attention_factor: float = 1.0         # cos and sin are multiplied by it (YaRN)


def rope_scaling_from_hf(cfg):
    """The scaling of a Hugging Face `config.json` dict, checked: a dict with `rope_type` and its
    parameters, or None when there is none. transformers 5 writes it as `rope_parameters`
    (with `rope_theta` inside), older versions as `rope_scaling` (`type` or `rope_type`); as in
    transformers, `rope_scaling` wins when both are there. Raises RopeScalingError naming the field."""
    field = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    params = cfg.get(field)
    if not params:
        return None
    if not isinstance(params, dict):
        raise RopeScalingError(f"{field} must be an object, got {params!r}")
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):   # a LLaMA rotates the whole head
        raise RopeScalingError(f"{field}.partial_rotary_factor {partial!r} is not supported (only 1.0)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return None
    params = dict(params)
    if rope_type in ("llama3", "yarn"):   # transformers' standardize_rope_params
        params["original_max_position_embeddings"] = cfg.get(
            "original_max_position_embeddings",
            params.get("original_max_position_embeddings", cfg.get("max_position_embeddings")))
    if rope_type == "yarn" and params.get("factor") is None and params["original_max_position_embeddings"]:
        params["factor"] = cfg.get("max_position_embeddings", 0) / params["original_max_position_embeddings"]
    return checked(rope_type, params, f"{field}.rope_type")


def rope_scaling_from_gguf(meta, arch="llama"):
    """The scaling of GGUF metadata (`{arch}.rope.scaling.*`, llama.cpp's keys) as a checked
    dict, or None. (A llama3 file's `rope_freqs.weight` is a tensor: `freq_factors_scaling`.)"""
    key = f"{arch}.rope.scaling."
    field = key + "type"
    gguf_type = meta.get(field, "none" if meta.get(key + "factor") in (None, 0.0, 1.0) else "linear")
    if gguf_type not in GGUF_TYPES:
        raise RopeScalingError(f"{field} {gguf_type!r} is not supported "
                               f"(llama_np computes {', '.join(GGUF_TYPES)})")
    rope_type = GGUF_TYPES[gguf_type]
    if rope_type is None:
        return None
    params = {"factor": meta.get(key + "factor")}
    if rope_type == "yarn":
        params["original_max_position_embeddings"] = meta.get(key + "original_context_length",
                                                              meta.get(f"{arch}.context_length"))
        for gguf_name, name in GGUF_YARN_KEYS.items():
            if meta.get(key + gguf_name) is not None:
                params[name] = meta[key + gguf_name]
    return checked(rope_type, params, field)


def freq_factors_scaling(freq_factors, head_dim, source=GGUF_FREQ_FACTORS):
    """The scaling of a GGUF `rope_freqs.weight` (ω_i / f_i), checked against head_dim."""
    factors = np.asarray(freq_factors, dtype=np.float32).reshape(-1)
    if factors.shape != (head_dim // 2,):
        raise RopeScalingError(f"{source} has {factors.size} entries, expected head_dim / 2 = {head_dim // 2}")
    return checked("freq_factors", {"freq_factors": factors.tolist()}, source)


def gguf_metadata(config, arch="llama"):
    """The `{arch}.rope.scaling.*` entries that describe config's scaling (what llama.cpp's
    convert_hf_to_gguf.py writes), as key → str, int or float. llama3 has none: its
    frequencies go in the tensor of `gguf_tensors`. Dynamic NTK is written as type "dynamic",
    which llama_np reads and llama.cpp (which has no dynamic NTK) refuses to load."""
    scaling, key = config.rope_scaling, f"{arch}.rope.scaling."
    if not scaling or scaling["rope_type"] in ("llama3", "freq_factors"):
        return {}
    entries = {key + "type": scaling["rope_type"], key + "factor": scaling["factor"]}
    if scaling["rope_type"] == "yarn":
        if not scaling.get("truncate", True):
            raise RopeScalingError("yarn with truncate=false has no GGUF form (llama.cpp always truncates)")
        entries[key + "original_context_length"] = scaling["original_max_position_embeddings"]
        attention_factor = _yarn_parameters(config.head_dim, config.rope_theta, scaling)[1]
        if "attention_factor" in scaling or "mscale" in scaling:   # else the reader's default
            entries[key + "yarn_attn_factor"] = attention_factor
        for gguf_name, name in GGUF_YARN_KEYS.items():
            if name != "attention_factor" and name in scaling:
                entries[key + gguf_name] = scaling[name]
    return entries


def gguf_tensors(config):
    """The tensors that carry config's scaling in a GGUF file: for llama3 (and a file's own
    freq_factors) `rope_freqs.weight`, the divisor f_i = ω_i / ω'_i of each frequency."""
    scaling = config.rope_scaling
    if not scaling or scaling["rope_type"] not in ("llama3", "freq_factors"):
        return {}
    if scaling["rope_type"] == "freq_factors":
        return {GGUF_FREQ_FACTORS: np.asarray(scaling["freq_factors"], dtype=np.float32)}
    unscaled = ops.rope_inverse_frequencies(config.head_dim, config.rope_theta)              # [hd/2]
    scaled = _llama3_inverse_frequencies(config.head_dim, config.rope_theta, scaling)        # [hd/2]
    return {GGUF_FREQ_FACTORS: (unscaled / scaled).astype(np.float32)}


def checked(rope_type, params, field):
    """{"rope_type": rope_type, and the parameters of that type}; raises RopeScalingError
    naming `field` for an unknown type and the parameter for a missing or bad value."""
    known = TYPES if field == GGUF_FREQ_FACTORS else TYPES[:-1]     # freq_factors: a GGUF tensor
    if rope_type not in known:
        raise RopeScalingError(f"{field} {rope_type!r} is not supported "
                               f"(llama_np computes default, {', '.join(TYPES[:-1])})")
    scaling = {"rope_type": rope_type}
    for name in _REQUIRED[rope_type] + _OPTIONAL.get(rope_type, ()):
        value = params.get(name)
        if value is None:
            if name in _REQUIRED[rope_type]:
                raise RopeScalingError(f"{field} {rope_type!r} needs {name}")
            continue
        if name == "truncate":
            scaling[name] = bool(value)
        elif name == "freq_factors":
            if not all(math.isfinite(f) and f > 0 for f in value):
                raise RopeScalingError(f"{field}: the frequency factors must be finite and > 0")
            scaling[name] = list(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise RopeScalingError(f"{field} {rope_type!r}: {name} must be a number > 0, got {value!r}")
        else:
            scaling[name] = int(value) if name == "original_max_position_embeddings" else float(value)
    return scaling


def max_context(config):
    """The longest context the scaled model is meant for: N·s for linear and dynamic (whose
    `max_position_embeddings` is the pre-training length), at least that for llama3 and yarn
    (which usually state the scaled length as `max_position_embeddings` already)."""
    scaling = config.rope_scaling
    if not scaling or scaling["rope_type"] == "freq_factors":
        return config.max_position_embeddings
    original = scaling.get("original_max_position_embeddings", config.max_position_embeddings)
    return max(config.max_position_embeddings, int(original * scaling["factor"]))


def rotation(config, seq_len):
    """The RoPE frequencies and attention factor of a forward pass over positions
    0 … seq_len − 1. Only dynamic NTK depends on seq_len: transformers recomputes θ' from
    max(position) + 1 on every call that outgrows max_position_embeddings, so a prompt's keys
    keep the θ' of the prefill and each decoded token gets that of its own length. (A
    transformers model also remembers the longest length it has seen until a call shorter
    than max_position_embeddings; this is what a freshly loaded one computes.)"""
    theta, scaling, hd = config.rope_theta, config.rope_scaling, config.head_dim
    if not scaling:
        return Rotation(theta)
    rope_type, factor = scaling["rope_type"], scaling.get("factor")
    if rope_type == "linear":
        return Rotation(theta, ops.rope_inverse_frequencies(hd, theta) / np.float32(factor))
    if rope_type == "dynamic":
        n_max = config.max_position_embeddings
        if seq_len <= n_max:
            return Rotation(theta)
        base = theta * ((factor * seq_len / n_max) - (factor - 1)) ** (hd / (hd - 2))
        exponents = np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)     # as transformers
        powers = (base ** exponents.astype(np.float64)).astype(np.float32)      # base': no float32 value
        return Rotation(theta, np.float32(1) / powers)
    if rope_type == "llama3":
        return Rotation(theta, _llama3_inverse_frequencies(hd, theta, scaling))
    if rope_type == "yarn":
        return Rotation(theta, *_yarn_parameters(hd, theta, scaling))
    divisors = np.asarray(scaling["freq_factors"], dtype=np.float32)                # freq_factors
    return Rotation(theta, ops.rope_inverse_frequencies(hd, theta) / divisors)


def _llama3_inverse_frequencies(head_dim, theta, scaling):
    """Llama 3.1: long wavelengths (> N / low_freq_factor) are divided by the factor, short
    ones (< N / high_freq_factor) kept, those between interpolated smoothly."""
    inv_freq = ops.rope_inverse_frequencies(head_dim, theta)                        # [hd/2]
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    n_original = scaling["original_max_position_embeddings"]
    wavelen = np.float32(2 * math.pi) / inv_freq                                    # [hd/2]
    scaled = np.where(wavelen > n_original / low, inv_freq / np.float32(factor), inv_freq)
    smooth = (np.float32(n_original) / wavelen - np.float32(low)) / np.float32(high - low)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    is_medium = ~(wavelen < n_original / high) & ~(wavelen > n_original / low)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _yarn_parameters(head_dim, theta, scaling):
    """YaRN: frequencies that make fewer than beta_slow turns within N are interpolated (÷ s),
    those making more than beta_fast kept, a linear ramp between; and the attention factor
    (0.1·ln s + 1, or mscale / mscale_all_dim's ratio, unless given)."""
    factor, n_original = scaling["factor"], scaling["original_max_position_embeddings"]

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        if scaling.get("mscale") and scaling.get("mscale_all_dim"):
            attention_factor = mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)

    def correction_dim(n_rotations):   # the pair index whose frequency turns n_rotations times in N
        return head_dim * math.log(n_original / (n_rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = correction_dim(scaling.get("beta_fast") or YARN_BETA_FAST)
    high = correction_dim(scaling.get("beta_slow") or YARN_BETA_SLOW)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001                                                                 # no singularity
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    extrapolation = 1 - ramp                                                          # [hd/2]: 1 keeps ω_i
    pos_freqs = np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    inv_freq = (1 / (np.float32(factor) * pos_freqs)) * (1 - extrapolation) + (1 / pos_freqs) * extrapolation
    return inv_freq.astype(np.float32), float(attention_factor)
