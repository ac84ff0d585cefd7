"""`LlamaConfig`: the handful of numbers that fix a LLaMA architecture.

Read from a Hugging Face `config.json` or from GGUF metadata (`llama.*` keys); the two
name the same quantities differently, and this is the one place that knows both.
"""
from dataclasses import dataclass, asdict

from llama_np.files.text import read_json


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

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                              f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")

    @property
    def n_rep(self):
        """How many query heads share one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_hf_dict(cls, cfg, source="config.json"):
        """From the fields of a Hugging Face LlamaConfig (`config.json`)."""
        arch = cfg.get("model_type")
        if arch not in (None, "llama", "mistral"):
            raise ConfigError(f"{source}: model_type {arch!r} is not a LLaMA")
        rope_scaling = cfg.get("rope_scaling")
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default"):
            raise ConfigError(f"{source}: rope_scaling {rope_scaling} is not supported")
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            eos = cfg.get("eos_token_id", 2)
            return cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                bos_token_id=cfg.get("bos_token_id", 1),
                eos_token_id=eos[0] if isinstance(eos, list) else eos,
            )
        except KeyError as e:
            raise ConfigError(f"{source}: missing field {e.args[0]!r}") from None

    @classmethod
    def from_json(cls, path):
        cfg = read_json(path, ConfigError, "the config")
        return cls.from_hf_dict(cfg, source=str(path))

    def to_hf_dict(self):
        """The fields of a transformers `LlamaConfig`, for writing `config.json`."""
        d = self.to_dict()
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

        hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = meta.get("llama.vocab_size", len(tokens) if tokens is not None else None)
        if vocab is None:
            raise ConfigError(f"{source}: neither llama.vocab_size nor tokenizer.ggml.tokens present")
        return cls(
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_hidden_layers=int(get("block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("attention.head_count_kv", heads)),
            head_dim=int(get("rope.dimension_count", hidden // heads)),
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            max_position_embeddings=int(get("context_length", 2048)),
            tie_word_embeddings=False,  # decided by the loader: no `output.weight` tensor
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        )
