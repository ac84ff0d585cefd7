"""LoRA against the independent oracle: torch autograd + peft on tiny random LLaMAs saved by
transformers. Gradients, adapter files in both directions, and merging."""
import numpy as np
import pytest

from conftest import save_tiny_llama
from llama_np.llama import adapter as lora
from llama_np import ops
from llama_np.checkpoint.peft import apply_adapters, load_adapter, save_adapter
from llama_np.checkpoint.safetensors import load_hf
from llama_np.llama.model import Llama
from llama_np.training.trainable import TrainableLlama

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

ALL = list(lora.PROJECTIONS)


def peft_model(folder, **lora_kwargs):
    import transformers
    base = transformers.LlamaForCausalLM.from_pretrained(folder)
    settings = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL, task_type="CAUSAL_LM")
    settings.update(lora_kwargs)
    model = peft.get_peft_model(base, peft.LoraConfig(**settings))
    torch.manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make every lora_A gradient zero
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    return model


def our_name(torch_name):
    """peft parameter name → llama_np adapter name."""
    name = torch_name.removeprefix("base_model.model.").replace(".default", "")
    return name.replace(".modules_to_save", "")


def batch(vocab, rng):
    """Two right-padded sequences with a masked prompt, as the data collator makes them."""
    ids = rng.integers(3, vocab, (2, 12))
    labels = ids.copy()
    labels[0, :4] = ops.IGNORE_INDEX    # prompt of the first example
    labels[1, :2] = ops.IGNORE_INDEX
    ids[1, 9:] = 0                      # padding
    labels[1, 9:] = ops.IGNORE_INDEX
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    return ids, labels, mask


@pytest.mark.parametrize("tied, extra", [
    (False, dict(modules_to_save=["embed_tokens", "lm_head"])),
    (True, dict(modules_to_save=["embed_tokens", "lm_head"], use_rslora=True)),
    (True, dict(modules_to_save=["embed_tokens"], ensure_weight_tying=True)),
], ids=["untied", "tied-rslora", "tied-shared"])
def test_gradients_match_torch_autograd_and_peft(tmp_path, rng, tied, extra):
    save_tiny_llama(tmp_path / "base", tied=tied)
    model = peft_model(tmp_path / "base", **extra)
    model.save_pretrained(tmp_path / "adapter")
    ids, labels, mask = batch(97, rng)
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    out.loss.backward()
    expected = {our_name(n): p.grad.numpy() for n, p in model.named_parameters() if p.requires_grad}

    config, weights = load_hf(str(tmp_path / "base"))
    adapter = load_adapter(tmp_path / "adapter", tied_base=config.tie_word_embeddings)
    loss, _, grads = TrainableLlama(config, weights, adapter).loss_and_grads(ids, labels)
    assert abs(loss - out.loss.item()) < 1e-5
    assert set(grads) == set(expected)
    for name, g in grads.items():
        err = np.linalg.norm(g - expected[name]) / np.linalg.norm(expected[name])
        assert err < 1e-4, (name, err)


def test_our_adapter_loaded_by_peft_gives_our_logits(tmp_path, rng):
    import transformers
    save_tiny_llama(tmp_path / "base", tied=False)
    config, weights = load_hf(str(tmp_path / "base"))
    lora_config = lora.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, target_modules=ALL,
                                  modules_to_save=["embed_tokens", "lm_head"])
    adapter = lora.Adapter.init(config, weights, lora_config, rng)
    for name, p in adapter.params.items():  # as if trained
        p += rng.standard_normal(p.shape).astype(np.float32) * 0.1
    save_adapter(tmp_path / "ours", adapter)

    base = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base")
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "ours").eval()
    ids = rng.integers(0, config.vocab_size, 16)
    with torch.no_grad():
        expected = theirs(torch.tensor(ids[None])).logits[0].numpy()
    ours = apply_adapters(Llama(config, weights), [tmp_path / "ours"]).forward(ids)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_peft_adapter_applied_by_llama_np_gives_peft_logits(tmp_path, rng, tied):
    save_tiny_llama(tmp_path / "base", tied=tied)
    model = peft_model(tmp_path / "base", r=2, lora_alpha=5, target_modules=["q_proj", "v_proj", "down_proj"],
                       modules_to_save=["lm_head"]).eval()
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    model.save_pretrained(tmp_path / "theirs")
    ids = rng.integers(0, 97, 16)
    with torch.no_grad():
        expected = model(torch.tensor(ids[None])).logits[0].numpy()
    config, weights = load_hf(str(tmp_path / "base"))
    ours = apply_adapters(Llama(config, weights), [tmp_path / "theirs"])
    assert "model.layers.0.self_attn.q_proj.weight" in ours.lora and "model.layers.0.self_attn.k_proj.weight" not in ours.lora
    np.testing.assert_allclose(ours.forward(ids), expected, atol=1e-4, rtol=0)


def test_merge_equals_peft_merge_and_unload(tmp_path):
    save_tiny_llama(tmp_path / "base", tied=False)
    model = peft_model(tmp_path / "base", modules_to_save=["embed_tokens"])
    model.save_pretrained(tmp_path / "adapter")
    expected = {n: p.detach().numpy() for n, p in model.merge_and_unload().state_dict().items()}
    config, weights = load_hf(str(tmp_path / "base"))
    _, merged = lora.merge(config, weights, load_adapter(tmp_path / "adapter"))
    assert set(merged) == set(expected)
    for name, w in merged.items():
        np.testing.assert_allclose(w, expected[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_two_adapters_stack_like_peft_merges_them_in_turn(tmp_path, rng):
    import transformers
    save_tiny_llama(tmp_path / "base", tied=False)
    for i, targets in enumerate([["q_proj", "o_proj"], ["q_proj", "up_proj"]]):
        peft_model(tmp_path / "base", target_modules=targets, lora_alpha=4 + i).save_pretrained(tmp_path / f"a{i}")
    base = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base")
    for i in range(2):
        base = peft.PeftModel.from_pretrained(base, tmp_path / f"a{i}").merge_and_unload()
    ids = rng.integers(0, 97, 10)
    with torch.no_grad():
        expected = base(torch.tensor(ids[None])).logits[0].numpy()
    config, weights = load_hf(str(tmp_path / "base"))
    ours = apply_adapters(Llama(config, weights), [tmp_path / "a0", tmp_path / "a1"])
    np.testing.assert_allclose(ours.forward(ids), expected, atol=1e-4, rtol=0)


def test_adapter_for_another_architecture_is_refused(tmp_path):
    save_tiny_llama(tmp_path / "small", tied=False)
    save_tiny_llama(tmp_path / "wide", tied=False, hidden=32, heads=2, kv_heads=1)
    peft_model(tmp_path / "wide").save_pretrained(tmp_path / "adapter")
    config, weights = load_hf(str(tmp_path / "small"))
    with pytest.raises(lora.AdapterError, match="another architecture"):
        apply_adapters(Llama(config, weights), [tmp_path / "adapter"])
