"""LoRA: low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A pre-trained weight W [out, in] stays frozen; what is learned is a low-rank update

    W' = W + (alpha / r) · B A,        A [r, in],  B [out, r],  r ≪ min(in, out)

so a Linear layer computes  y = x Wᵀ + (alpha/r) · dropout(x) Aᵀ Bᵀ  (paper eq. 3). A starts
kaiming-uniform and B at zero, so training starts exactly at the base model; only
r·(in + out) numbers per matrix are trained (for SmolLM2's q_proj with r = 8: 9,216 instead
of 331,776). The factor alpha/r keeps the size of the update roughly independent of r
(rsLoRA, Kalajdzievski 2023, uses alpha/√r instead, which stays stable at large r).
After training the update can be merged, W += (alpha/r) B A, and costs nothing at inference.

Chinese-LLaMA/Alpaca puts LoRA on q, k, v, o (and gate, up, down for instruction tuning)
with r = 8, alpha = 32, dropout 0.05, and additionally trains full copies of the embedding
and the output head (PEFT's `modules_to_save`), because the vocabulary was extended.

This module holds the `LoraConfig` (PEFT's field names), the `Adapter` (its tensors, by
PEFT names) and merging. The LoRA branch's forward/backward pair is `llama_np.ops.lora`;
`Llama.apply_adapter` runs a model with adapters beside its weights, unmerged; reading and
writing the PEFT files is `llama_np.checkpoint.peft`.
"""
import dataclasses
import math
import re
from dataclasses import dataclass, field

import numpy as np

from llama_np.llama.weights import layer_weight_names
from llama_np.quant import dense

# The seven projections of a LLaMA block, by their Hugging Face module names, and the key
# `llama.weights.layer_weight_names` gives each.
PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
               "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")

# modules_to_save: the modules PEFT can train as full copies, and their weight names.
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
SAVABLE_MODULES = {"embed_tokens": EMBED, "lm_head": LM_HEAD}


class AdapterError(ValueError):
    """A LoRA configuration or adapter that does not fit the model it is applied to."""


def lora_delta(lora_a, lora_b, scaling):
    """The merged update scaling · B A [out, in], computed as PEFT does ((B @ A) · scaling)."""
    return (lora_b @ lora_a) * np.float32(scaling)


# ------------------------------------------------------------------ configuration
def parse_target_modules(spec):
    """'q,k,v,o,gate,up,down' / 'q_proj,v_proj' / 'all' / 'attention' / 'mlp' → HF names."""
    names = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item == "all":
            names.extend(PROJECTIONS)
        elif item in ("attention", "attn"):
            names.extend(ATTENTION_PROJECTIONS)
        elif item == "mlp":
            names.extend(MLP_PROJECTIONS)
        elif item in PROJECTIONS:
            names.append(item)
        elif item + "_proj" in PROJECTIONS:
            names.append(item + "_proj")
        else:
            raise AdapterError(f"target module {item!r} does not exist in a LLaMA; choose from "
                               f"{', '.join(s[:-5] for s in PROJECTIONS)} (or all, attention, mlp)")
    if not names:
        raise AdapterError("no target modules given")
    return sorted(set(names), key=list(PROJECTIONS).index)


@dataclass
class LoraConfig:
    """What PEFT's `adapter_config.json` says about a LoRA adapter (same field names)."""
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    modules_to_save: list = field(default_factory=list)
    use_rslora: bool = False
    # PEFT's semantics for a tied base: True → one trained copy serves embed_tokens and
    # lm_head; False → separate copies (the untouched module keeps the frozen tied weight).
    ensure_weight_tying: bool = False
    alpha_pattern: dict = field(default_factory=dict)   # module-name regex → alpha
    rank_pattern: dict = field(default_factory=dict)    # module-name regex → r
    base_model_name_or_path: str | None = None

    def __post_init__(self):
        if not _is_rank(self.r):
            raise AdapterError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not _is_positive(self.lora_alpha):
            raise AdapterError(f"lora_alpha must be a finite number > 0, got {self.lora_alpha!r}")
        if not (_is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise AdapterError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout!r}")
        for field_name in ("target_modules", "modules_to_save"):
            names = getattr(self, field_name) or []
            if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
                raise AdapterError(f"{field_name} must be a list of module names, got {names!r}")
        for field_name, valid, what in (("rank_pattern", _is_rank, "a positive integer"),
                                        ("alpha_pattern", _is_positive, "a finite number > 0")):
            patterns = getattr(self, field_name)
            if not isinstance(patterns, dict):
                raise AdapterError(f"{field_name} must be an object, got {patterns!r}")
            for key, value in patterns.items():
                try:
                    re.compile(key)
                except re.error as e:
                    raise AdapterError(f"{field_name} key {key!r} is not a valid pattern ({e})") from None
                if not valid(value):
                    raise AdapterError(f"{field_name}[{key!r}] must be {what}, got {value!r}")
        # PEFT matches names by their last dotted parts ("model.embed_tokens" = "embed_tokens")
        self.target_modules = _unique(n.split(".")[-1] for n in self.target_modules or [])
        for name in self.target_modules:
            if name not in PROJECTIONS:
                raise AdapterError(f"target module {name!r} does not exist in a LLaMA; "
                                   f"LoRA can target {', '.join(PROJECTIONS)}")
        self.modules_to_save = _unique(n.split(".")[-1] for n in self.modules_to_save or [])
        for name in self.modules_to_save:
            if name not in SAVABLE_MODULES:
                raise AdapterError(f"modules_to_save entry {name!r} is not one of "
                                   f"{', '.join(SAVABLE_MODULES)}")

    def rank_for(self, module_name):
        return _pattern_value(self.rank_pattern, module_name, self.r)

    def scaling_for(self, module_name, rank=None):
        """alpha / r (alpha / √r with rsLoRA) for one module, e.g. 'model.layers.0.self_attn.q_proj'."""
        rank = rank or self.rank_for(module_name)
        alpha = _pattern_value(self.alpha_pattern, module_name, self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    @property
    def scaling(self):
        return self.scaling_for("")


def _unique(names):
    return list(dict.fromkeys(names))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive(value):
    return _is_number(value) and value > 0


def _is_rank(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _pattern_value(patterns, module_name, default):
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that matches the end of the
    module name at a dot boundary."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


def module_name(weight_name):
    """'model.layers.0.self_attn.q_proj.weight' → 'model.layers.0.self_attn.q_proj'."""
    return weight_name.removesuffix(".weight")


def lora_names(weight_name):
    """The PEFT names of the A and B matrices adapting one weight."""
    base = module_name(weight_name)
    return base + ".lora_A.weight", base + ".lora_B.weight"


def targeted_weights(config, lora_config):
    """HF names of the weights LoRA adapts, layer by layer, in model order."""
    names = []
    for i in range(config.num_hidden_layers):
        by_key = layer_weight_names(i)
        names.extend(by_key[PROJECTIONS[m]] for m in PROJECTIONS if m in lora_config.target_modules)
    return names


# ------------------------------------------------------------------------ adapters
class Adapter:
    """A LoRA adapter: its config and its tensors by PEFT name (without the
    `base_model.model.` prefix of the file): `...q_proj.lora_A.weight` [r, in],
    `...q_proj.lora_B.weight` [out, r], and full copies `model.embed_tokens.weight` /
    `lm_head.weight` for modules_to_save. All float32; these are what training updates."""

    def __init__(self, lora_config, params, tied_base=False):
        self.config = lora_config
        self.params = params
        self.tied_base = tied_base  # the base model ties lm_head to the embedding

    @classmethod
    def init(cls, model_config, weights, lora_config, rng):
        """A fresh adapter for a model: A kaiming-uniform, B zero, and modules_to_save
        copied from the base (dequantized)."""
        params = {}
        for name in targeted_weights(model_config, lora_config):
            out_features, in_features = weights[name].shape
            rank = lora_config.rank_for(module_name(name))
            if rank > min(out_features, in_features):
                raise AdapterError(f"LoRA rank {rank} exceeds the size of {module_name(name)} "
                                   f"[{out_features}, {in_features}]: a rank above "
                                   f"{min(out_features, in_features)} adds nothing")
            a_name, b_name = lora_names(name)
            # kaiming_uniform_(a=√5) as nn.Linear / PEFT: bound = gain·√(3/fan_in) with
            # gain = √(2/(1+a²)) = √(1/3), i.e. bound = 1/√in.
            bound = 1.0 / math.sqrt(in_features)
            params[a_name] = rng.uniform(-bound, bound, (rank, in_features)).astype(np.float32)
            params[b_name] = np.zeros((out_features, rank), dtype=np.float32)
        adapter = cls(lora_config, params, tied_base=model_config.tie_word_embeddings)
        for module in lora_config.modules_to_save:
            name = adapter.copy_name(module)
            if name not in params:
                params[name] = np.array(dense(_base_weight(weights, model_config, SAVABLE_MODULES[module])),
                                        dtype=np.float32)
        return adapter

    def copy_name(self, module):
        """Where the trained copy of a modules_to_save entry lives in `params`: with
        ensure_weight_tying on a tied base both modules share the embedding's copy."""
        if self.tied_base and self.config.ensure_weight_tying:
            return EMBED
        return SAVABLE_MODULES[module]

    @property
    def embedding(self):
        """The trained embedding copy, or None."""
        if self.tied_base and self.config.ensure_weight_tying:
            return self.params.get(EMBED)
        return self.params.get(EMBED) if "embed_tokens" in self.config.modules_to_save else None

    @property
    def output_head(self):
        """The trained lm_head copy, or None (then the base's lm_head or tied embedding)."""
        if self.tied_base and self.config.ensure_weight_tying:
            return self.params.get(EMBED)
        return self.params.get(LM_HEAD) if "lm_head" in self.config.modules_to_save else None

    def lora_pairs(self):
        """(weight name, A, B, scaling) for every adapted weight."""
        for name in sorted(self.params):
            if name.endswith(".lora_A.weight"):
                module = name.removesuffix(".lora_A.weight")
                lora_a, lora_b = self.params[name], self.params[module + ".lora_B.weight"]
                yield module + ".weight", lora_a, lora_b, self.config.scaling_for(module, lora_a.shape[0])

    def n_trainable(self):
        return sum(p.size for p in self.params.values())

    def check_compatible(self, model_config, weights, source="adapter"):
        """Raise AdapterError naming the first tensor that does not fit this model."""
        names = {}
        for i in range(model_config.num_hidden_layers):
            names.update({n: None for n in layer_weight_names(i).values()})
        for name, lora_a, lora_b, _ in self.lora_pairs():
            if name not in weights or name not in names:
                raise AdapterError(f"{source}: adapts {module_name(name)!r}, which this model "
                                   f"({model_config.num_hidden_layers} layers) does not have")
            out_features, in_features = weights[name].shape
            if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
                raise AdapterError(f"{source}: {module_name(name)} has lora_A {lora_a.shape} and "
                                   f"lora_B {lora_b.shape}, whose ranks differ")
            if lora_a.shape[1] != in_features or lora_b.shape[0] != out_features:
                raise AdapterError(
                    f"{source}: {module_name(name)} expects a [{lora_b.shape[0]}, {lora_a.shape[1]}] "
                    f"weight but the model's is [{out_features}, {in_features}] — an adapter for "
                    f"another architecture")
        expected = (model_config.vocab_size, model_config.hidden_size)
        for module in self.config.modules_to_save:
            copy = self.params.get(self.copy_name(module))
            if copy is None:
                raise AdapterError(f"{source}: modules_to_save lists {module!r} but the file "
                                   f"has no {SAVABLE_MODULES[module]!r}")
            if copy.shape != expected:
                hint = (f"; the adapter was trained on a model with {copy.shape[0]} tokens: load that "
                        "one (a resized model, e.g. the recipe's resized.gguf)"
                        if copy.shape[1:] == expected[1:] else "")
                raise AdapterError(f"{source}: {module} copy has shape {copy.shape}, the model "
                                   f"needs {expected} (vocabulary {model_config.vocab_size}){hint}")


def _base_weight(weights, model_config, name):
    if name == LM_HEAD and model_config.tie_word_embeddings:
        return weights[EMBED]
    return weights[name]


# ---------------------------------------------------------------- merge and apply
def merge(model_config, weights, adapter):
    """The base weights with the adapter merged in: W + scaling · B A for every adapted
    weight (quantized weights are dequantized one matrix at a time), and the
    modules_to_save copies in place of the originals. Returns (config, weights): the config
    is untied when the adapter trained embedding and head apart. `weights` is not changed."""
    merged = dict(weights)
    for name, lora_a, lora_b, scaling in adapter.lora_pairs():
        merged[name] = dense(merged[name]) + lora_delta(lora_a, lora_b, scaling)
    config = with_copies(model_config, merged, adapter)
    return config, merged


def unmerge(weights, adapter):
    """Subtract the LoRA updates merged by `merge` (modules_to_save copies cannot be
    unmerged: the originals are gone)."""
    out = dict(weights)
    for name, lora_a, lora_b, scaling in adapter.lora_pairs():
        out[name] = dense(out[name]) - lora_delta(lora_a, lora_b, scaling)
    return out


def with_copies(model_config, weights, adapter):
    """Put the adapter's embed_tokens / lm_head copies into `weights`; returns the config
    (untied when the head and the embedding are now different matrices)."""
    embedding, head = adapter.embedding, adapter.output_head
    if embedding is None and head is None:
        return model_config
    tied = model_config.tie_word_embeddings
    if tied and head is None:
        head = weights[EMBED]   # PEFT: the head keeps the frozen tied weight
    if tied and embedding is None:
        embedding = weights[EMBED]
    if embedding is not None:
        weights[EMBED] = embedding
    if head is not None:
        weights[LM_HEAD] = head
    still_tied = tied and head is weights[EMBED]
    if not still_tied:
        weights.setdefault(LM_HEAD, weights[EMBED])
    elif LM_HEAD in weights:
        del weights[LM_HEAD]
    return dataclasses.replace(model_config, tie_word_embeddings=still_tied)
