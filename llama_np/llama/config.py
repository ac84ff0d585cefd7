"""`LlamaConfig`: the handful of numbers that fix a LLaMA architecture.

Read from a Hugging Face `config.json` or from GGUF metadata (`llama.*` keys); the two
name the same quantities differently, and this is the one place that knows both.
"""
import math
import numbers
from dataclasses import dataclass, asdict, fields

from llama_np.files.text import read_json
from llama_np.llama.rope_scaling import RopeScalingError, max_context, rope_scaling_from_gguf, rope_scaling_from_hf

# The fields that count something (tokens, widths, layers, heads, positions): each a positive
# integer no larger than MAX_COUNT, far above any real model and small enough that sizes
# computed from them stay exact in int64.
COUNT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
MAX_COUNT = 2**31 - 1
# A lower bound on the bytes a file needs per weight: Q2_K (84 bytes for 256 weights) is the
# smallest format read. A config promising more weights than its file can hold is refused
# before anything is allocated or looped over.
MIN_BYTES_PER_WEIGHT = 84 / 256


class ConfigError(ValueError):
    """A config file or metadata that does not describe a LLaMA llama_np can run."""


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int              # D
    intermediate_size: int        # F, the SwiGLU hidden width
    num_hidden_layers: int        # L
    num_attention_heads: int      # H (query heads)
    num_key_value_heads: int      # H_kv; H % H_kv == 0 (grouped-query attention)
    head_dim: int                 # usually D / H
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    rope_scaling: dict | None = None   # RoPE scaling, transformers' names (llama.rope_scaling)

    def __post_init__(self):
        self.check()

    def check(self):
        """Raise ConfigError naming the first field that no LLaMA could have: the counts
        positive integers (at most MAX_COUNT), the query heads a multiple of the key/value
        heads, head_dim even (RoPE rotates pairs), rms_norm_eps and rope_theta finite and
        positive, the token ids non-negative integers or None."""
        for name in COUNT_FIELDS:
            value = getattr(self, name)
            if not _is_integer(value) or not 0 < value <= MAX_COUNT:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                              f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not (_is_real(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError(f"tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not (_is_integer(value) and value >= 0):
                raise ConfigError(f"{name} must be a token id (an integer >= 0) or null, got {value!r}")

    def n_weights(self):
        """How many weights the checkpoint of this config holds (lm_head counted if untied)."""
        D, F, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        q_out, kv_out = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        per_layer = 2 * D + D * (2 * q_out + 2 * kv_out) + 3 * D * F
        return V * D * (1 if self.tie_word_embeddings else 2) + D + L * per_layer

    def check_fits(self, n_bytes, source):
        """Raise ConfigError if files of `n_bytes` in all cannot hold this config's weights,
        even at 4 bits: a config of 10⁹ layers is refused here, not after 10⁹ steps."""
        needed = self.n_weights() * MIN_BYTES_PER_WEIGHT
        if needed > n_bytes:
            raise ConfigError(f"{source}: the config describes {self.n_weights():,} weights "
                              f"({self.num_hidden_layers} layers of width {self.hidden_size}), "
                              f"more than the {n_bytes:,} bytes of weights can hold")

    @property
    def max_context(self):
        """The most positions this model is meant to see: max_position_embeddings, or the
        longer context its RoPE scaling was made for (`rope_scaling.max_context`)."""
        return max_context(self)

    @property
    def n_rep(self):
        """How many query heads share one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_hf_dict(cls, cfg, source="config.json"):
        """From the fields of a Hugging Face LlamaConfig (`config.json`)."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: expected a JSON object of settings, got a {type(cfg).__name__}")
        arch = cfg.get("model_type")
        if arch not in (None, "llama", "mistral"):
            raise ConfigError(f"{source}: model_type {arch!r} is not a LLaMA")
        rope_scaling = _rope_scaling(rope_scaling_from_hf, cfg, source)
        rope_parameters = cfg.get("rope_parameters")
        rope_parameters = rope_parameters if isinstance(rope_parameters, dict) else {}
        try:
            hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
            eos = cfg.get("eos_token_id", 2)
            return cls._checked(source,
                vocab_size=cfg["vocab_size"],
                hidden_size=hidden,
                intermediate_size=cfg["intermediate_size"],
                num_hidden_layers=cfg["num_hidden_layers"],
                num_attention_heads=heads,
                num_key_value_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=cfg.get("head_dim") or _quotient(hidden, heads),
                rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
                rope_theta=cfg.get("rope_theta", rope_parameters.get("rope_theta", 10000.0)),
                max_position_embeddings=cfg.get("max_position_embeddings", 2048),
                tie_word_embeddings=cfg.get("tie_word_embeddings", False),
                bos_token_id=cfg.get("bos_token_id", 1),
                eos_token_id=eos[0] if isinstance(eos, list) and eos else eos,
                rope_scaling=rope_scaling,
            )
        except KeyError as e:
            raise ConfigError(f"{source}: missing field {e.args[0]!r}") from None

    @classmethod
    def _checked(cls, source, **values):
        """cls(**values), its check's error naming `source`."""
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path):
        cfg = read_json(path, ConfigError, "the config")
        return cls.from_hf_dict(cfg, source=str(path))

    def to_hf_dict(self):
        """The fields of a transformers `LlamaConfig`, for writing `config.json` (RoPE scaling
        as transformers' `rope_scaling`, left out when there is none)."""
        d = self.to_dict()
        if d["rope_scaling"] is None:
            del d["rope_scaling"]
        elif d["rope_scaling"]["rope_type"] == "freq_factors":
            raise ConfigError("RoPE frequencies read from a GGUF's rope_freqs.weight have no "
                              "config.json form; write a .gguf instead")
        d.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                 attention_bias=False, mlp_bias=False, torch_dtype="float32")
        return d

    @classmethod
    def from_gguf_metadata(cls, meta, source="GGUF"):
        """From GGUF metadata (llama.cpp key names, `{arch}.*`)."""
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise ConfigError(f"{source}: general.architecture is {arch!r}, only 'llama' is supported")

        def get(key, default=None):
            value = meta.get(f"llama.{key}", default)
            if value is None:
                raise ConfigError(f"{source}: missing metadata key 'llama.{key}'")
            return value

        hidden, heads = get("embedding_length"), get("attention.head_count")
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = meta.get("llama.vocab_size", len(tokens) if isinstance(tokens, list) else None)
        if vocab is None:
            raise ConfigError(f"{source}: neither llama.vocab_size nor tokenizer.ggml.tokens present")
        return cls._checked(source,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=get("feed_forward_length"),
            num_hidden_layers=get("block_count"),
            num_attention_heads=heads,
            num_key_value_heads=get("attention.head_count_kv", heads),
            head_dim=meta.get("llama.rope.dimension_count", _quotient(hidden, heads)),
            rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=get("rope.freq_base", 10000.0),
            max_position_embeddings=get("context_length", 2048),
            tie_word_embeddings=False,  # decided by the loader: no `output.weight` tensor
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
            rope_scaling=_rope_scaling(rope_scaling_from_gguf, meta, source),
        )  # a llama3 file's rope_freqs.weight is a tensor: the loader adds it


def _rope_scaling(parse, fields, source):
    """parse(fields), its RopeScalingError a ConfigError naming `source`."""
    try:
        return parse(fields)
    except RopeScalingError as e:
        raise ConfigError(f"{source}: {e}") from None


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _quotient(hidden, heads):
    """The usual head_dim, D / H, when both are positive integers (else `check` refuses them)."""
    return hidden // heads if _is_integer(hidden) and _is_integer(heads) and heads > 0 else None
