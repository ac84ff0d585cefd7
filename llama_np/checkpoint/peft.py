"""PEFT LoRA adapters on disk: a folder with `adapter_config.json` and
`adapter_model.safetensors`, readable and writable by Hugging Face `peft`.

    adapter_config.json          {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8,
                                  "lora_alpha": 32, "lora_dropout": 0.05,
                                  "target_modules": ["q_proj", ...], "modules_to_save": [...], ...}
    adapter_model.safetensors    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight  [r, in]
                                 base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight  [out, r]
                                 base_model.model.model.embed_tokens.weight   [V, D]  (modules_to_save)
                                 base_model.model.lm_head.weight              [V, D]  (modules_to_save)

`base_model.model.` is the path of the transformers model inside PEFT's wrappers; the rest
is the Hugging Face weight name with `.weight` replaced by `.lora_A.weight` /
`.lora_B.weight`. Variants llama_np does not implement (DoRA, LoRA biases, fan_in_fan_out,
LoRA on embeddings) are refused with a message that names them.
"""
import json
import os
import re

import numpy as np

from llama_np.checkpoint.safetensors import CheckpointError, read_safetensors
from llama_np.files.atomic import atomic_path, atomic_write_text
from llama_np.files.text import read_json
from llama_np.llama.adapter import (EMBED, LM_HEAD, PROJECTIONS, SAVABLE_MODULES, Adapter, AdapterError,
                           LoraConfig)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.(\w+)\.lora_[AB]\.weight")


def _config_dict(config: LoraConfig):
    """The fields PEFT 0.21 writes for a plain LoRA adapter."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": config.base_model_name_or_path,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(config.target_modules),
        "modules_to_save": list(config.modules_to_save) or None,
        "ensure_weight_tying": config.ensure_weight_tying,
        "use_rslora": config.use_rslora,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
        "bias": "none",
        "lora_bias": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }


def save_adapter(folder, adapter):
    """Write `adapter` as a PEFT folder; each file written to a temporary name and renamed
    into place, so an interrupted save never leaves a half-written file."""
    from safetensors.numpy import save_file

    for name, p in adapter.params.items():  # what load_adapter would refuse is not written
        if not np.isfinite(p).all():
            raise AdapterError(f"{folder}: not saved, {name} holds non-finite values (NaN or "
                               f"infinity): the training diverged (a lower --lr?)")
    os.makedirs(folder, exist_ok=True)
    tensors = {PREFIX + name: np.ascontiguousarray(p, dtype=np.float32)
               for name, p in adapter.params.items()}
    if adapter.tied_base and adapter.config.ensure_weight_tying and EMBED in adapter.params:
        tensors[PREFIX + LM_HEAD] = tensors[PREFIX + EMBED].copy()  # PEFT writes both names
    with atomic_path(os.path.join(folder, WEIGHTS_FILE)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    atomic_write_text(os.path.join(folder, CONFIG_FILE), json.dumps(_config_dict(adapter.config), indent=2))


def read_adapter_config(folder):
    """The LoraConfig of an adapter folder, refusing what llama_np cannot run."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such adapter folder")
    if not os.path.exists(path):
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} (not a PEFT adapter folder)")
    raw = read_json(path, CheckpointError, "the adapter config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type is {raw.get('peft_type')!r}; only LORA adapters are supported")
    if raw.get("task_type") not in (None, "CAUSAL_LM"):
        raise AdapterError(f"{path}: task_type {raw['task_type']!r} is not CAUSAL_LM")
    for flag, meaning in [("use_dora", "DoRA"), ("lora_bias", "LoRA biases"),
                          ("fan_in_fan_out", "fan_in_fan_out (Conv1D layouts)")]:
        if raw.get(flag):
            raise AdapterError(f"{path}: {meaning} adapters are not supported")
    if raw.get("bias", "none") != "none":
        raise AdapterError(f"{path}: bias={raw['bias']!r} is not supported (only 'none')")
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):
        targets = []  # a regex or "all-linear": the tensors in the file decide
    if not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise AdapterError(f"{path}: target_modules must be a list of module names or a pattern, "
                           f"got {targets!r}")
    for name in (t.split(".")[-1] for t in targets):
        if name not in PROJECTIONS:
            raise AdapterError(f"{path}: target module {name!r} does not exist in a LLaMA "
                               f"(LoRA on {', '.join(PROJECTIONS)} is supported)")
    try:
        return LoraConfig(
            r=raw.get("r", 8),
            lora_alpha=raw.get("lora_alpha", 8),
            lora_dropout=raw.get("lora_dropout") or 0.0,
            target_modules=targets,
            modules_to_save=raw.get("modules_to_save") or [],
            use_rslora=bool(raw.get("use_rslora", False)),
            ensure_weight_tying=bool(raw.get("ensure_weight_tying", False)),
            alpha_pattern=raw.get("alpha_pattern") or {},
            rank_pattern=raw.get("rank_pattern") or {},
            base_model_name_or_path=raw.get("base_model_name_or_path"),
        )
    except AdapterError as e:
        raise AdapterError(f"{path}: {e}") from None


def load_adapter(folder, tied_base=False):
    """Read a PEFT LoRA folder into an `Adapter` (float32 tensors by PEFT name, prefix removed).
    `tied_base`: whether the model it will be applied to ties lm_head to the embedding."""
    folder = os.fspath(folder)
    config = read_adapter_config(folder)
    path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(folder, "adapter_model.bin")):
            raise CheckpointError(f"{folder}: adapter_model.bin (a pickle) is not read; "
                                  f"re-save the adapter with safe_serialization")
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}")
    params, targets, copies = {}, set(), []
    for key, tensor in read_safetensors(path).items():
        name = key.removeprefix(PREFIX)
        match = _LORA_KEY.fullmatch(name)
        if match:
            if match.group(2) not in PROJECTIONS:
                raise AdapterError(f"{path}: tensor {key!r} adapts {match.group(2)!r}, which a LLaMA "
                                   f"does not have — an adapter for another architecture?")
            targets.add(match.group(2))
            params[name] = tensor
        elif name in (EMBED, LM_HEAD):
            copies.append(name)
            params[name] = tensor
        else:
            raise AdapterError(f"{path}: tensor {key!r} is not a LLaMA LoRA weight "
                               f"(unsupported variant or another architecture)")
    for name in [n for n in params if n.endswith(".lora_A.weight")]:
        if name.replace(".lora_A.", ".lora_B.") not in params:
            raise AdapterError(f"{path}: {name} has no matching lora_B")
    for name in [n for n in params if n.endswith(".lora_B.weight")]:
        if name.replace(".lora_B.", ".lora_A.") not in params:
            raise AdapterError(f"{path}: {name} has no matching lora_A")
    _check_tensors(path, config, params, targets, copies)
    config.target_modules = sorted(targets | set(config.target_modules), key=list(PROJECTIONS).index)
    saved_modules = [m for m, n in SAVABLE_MODULES.items() if n in copies]
    config.modules_to_save = [m for m in SAVABLE_MODULES
                              if m in config.modules_to_save or m in saved_modules]
    adapter = Adapter(config, params, tied_base=tied_base)
    if tied_base and config.ensure_weight_tying and LM_HEAD in params:
        head = params.pop(LM_HEAD)  # one shared copy: the embedding's (PEFT writes both)
        params.setdefault(EMBED, head)
    return adapter


def _check_tensors(path, config, params, targets, copies):
    """The file's tensors agree with its config: finite, each pair of the rank the config
    gives its module, every listed target adapted somewhere, and something adapted at all."""
    for name, tensor in params.items():
        if not np.isfinite(tensor).all():
            raise AdapterError(f"{path}: tensor {name!r} holds non-finite values (NaN or infinity)")
    for name in sorted(n for n in params if n.endswith(".lora_A.weight")):
        module = name.removesuffix(".lora_A.weight")
        lora_a, lora_b = params[name], params[module + ".lora_B.weight"]
        rank = config.rank_for(module)
        if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != rank or lora_b.shape[1] != rank:
            raise AdapterError(f"{path}: {module} has lora_A {lora_a.shape} and lora_B {lora_b.shape}, "
                               f"but the config gives it rank r={rank}")
    missing = [m for m in config.target_modules if m not in targets]
    if missing:
        raise AdapterError(f"{path}: target_modules lists {', '.join(missing)}, but the file has "
                           f"no LoRA tensors for {'it' if len(missing) == 1 else 'them'}")
    if not targets and not copies:
        raise AdapterError(f"{path}: the adapter holds no LoRA tensors and no modules_to_save copies")


def apply_adapters(model, adapter_dirs):
    """Run `model` with the PEFT adapters in `adapter_dirs` beside its weights, unmerged, in
    the given order (`Llama.apply_adapter`). Raises AdapterError or CheckpointError naming
    the folder. Returns the model."""
    for folder in adapter_dirs:
        adapter = load_adapter(folder, tied_base=model.config.tie_word_embeddings)
        model.apply_adapter(adapter, source=str(folder))
    return model
