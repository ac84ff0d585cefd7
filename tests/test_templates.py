"""Chat templates: the built-in formats as exact strings, Jinja templates against
transformers' `apply_chat_template`, and the sandbox."""
import pytest

from llama_np.tokenizer.templates import (_chatml_default_system, _compile_jinja, render_chat,
                                          resolve_template, stop_strings_for)

ALPACA_ONE_TURN = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n\n{instruction}\n\n### Response:\n\n")
CONVERSATION = [{"role": "user", "content": "你好！"}, {"role": "assistant", "content": "你好，有什么可以帮你？"},
                {"role": "user", "content": "What is 2+2?"}]
SYSTEM = {"role": "system", "content": "You answer in one word."}

# Templates written for these tests, using what model templates use: loop variables,
# namespace, raise_exception, tojson, bos/eos tokens and whitespace control.
JINJA_TEMPLATES = {
    "llama2-like": (
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}\n"
        "{% for m in messages %}\n"
        "    {% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}\n"
        "    {% if m['role'] == 'user' %}{{ bos_token }}[INST] "
        "{% if loop.first and sys %}<<SYS>>\n{{ sys }}\n<</SYS>>\n\n{% endif %}{{ m['content'] | trim }} [/INST]"
        "{% else %} {{ m['content'] | trim }} {{ eos_token }}{% endif %}\n"
        "{% endfor %}\n"),
    "counting": (
        "{% set ns = namespace(n=0) %}\n"
        "{% for m in messages %}\n"
        "  {% set ns.n = ns.n + 1 %}\n"
        "  {{ ns.n }}. {{ m | tojson }}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}{{ ns.n + 1 }}. assistant:{% endif %}"),
}


@pytest.fixture(scope="module")
def transformers_render():
    """apply_chat_template of a transformers tokenizer carrying `template` (the oracle)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    def render(messages, template, add_generation_prompt=True):
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()),
                                                   bos_token="<s>", eos_token="</s>", chat_template=template)
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return render


def ours(messages, template, add_generation_prompt=True):
    return render_chat(messages, template, bos_token="<s>", eos_token="</s>",
                       add_generation_prompt=add_generation_prompt)


# ----- built-in formats -------------------------------------------------------------------------

def test_alpaca_one_turn_is_the_chinese_alpaca_inference_prompt():
    instruction = "为什么天空是蓝色的？"
    assert render_chat([{"role": "user", "content": instruction}], "alpaca") == \
        ALPACA_ONE_TURN.format(instruction=instruction)


def test_alpaca_several_turns_and_a_system_message():
    expected = ("You answer in one word.\n\n"
                "### Instruction:\n\n你好！\n\n"
                "### Response:\n\n你好，有什么可以帮你？\n\n"
                "### Instruction:\n\nWhat is 2+2?\n\n"
                "### Response:\n\n")
    assert render_chat([SYSTEM] + CONVERSATION, "alpaca") == expected
    assert render_chat([SYSTEM] + CONVERSATION, "alpaca", add_generation_prompt=False) == \
        expected[:-len("### Response:\n\n")]
    assert render_chat(CONVERSATION, "alpaca").startswith(ALPACA_ONE_TURN[:ALPACA_ONE_TURN.index("###")])
    with pytest.raises(ValueError, match="no place for a 'tool' message"):
        render_chat([{"role": "tool", "content": "{}"}], "alpaca")


def test_chatml_exact():
    assert render_chat([SYSTEM] + CONVERSATION[:1], "chatml") == (
        "<|im_start|>system\nYou answer in one word.<|im_end|>\n"
        "<|im_start|>user\n你好！<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert render_chat(CONVERSATION[:1], "chatml", add_generation_prompt=False) == "<|im_start|>user\n你好！<|im_end|>\n"


# ----- Jinja templates against transformers ------------------------------------------------------

@pytest.mark.parametrize("name", sorted(JINJA_TEMPLATES))
@pytest.mark.parametrize("with_system", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_jinja_templates_render_like_transformers(transformers_render, name, with_system, add_generation_prompt):
    messages = ([SYSTEM] if with_system else []) + CONVERSATION
    template = JINJA_TEMPLATES[name]
    assert ours(messages, template, add_generation_prompt) == \
        transformers_render(messages, template, add_generation_prompt)


def test_the_real_models_template_renders_like_transformers(real_model_path, transformers_render):
    """SmolLM2's own ChatML template (with its default system prompt when there is none);
    given a system message it writes plain ChatML, so it also checks the built-in."""
    from llama_np.checkpoint.gguf_file import GGUFFile
    template = GGUFFile(real_model_path).metadata["tokenizer.chat_template"]
    for messages in (CONVERSATION, [SYSTEM] + CONVERSATION):
        assert ours(messages, template) == transformers_render(messages, template)
    assert ours([SYSTEM] + CONVERSATION, template) == render_chat([SYSTEM] + CONVERSATION, "chatml")
    assert stop_strings_for(template) == ["<|im_end|>"]


# SmolLM2's template with another default system message, and one a character away from it
SMOL_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\n{system}<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + "
                 "'\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant\n' }}{% endif %}")
CONVERSATIONS = [CONVERSATION, [SYSTEM] + CONVERSATION, CONVERSATION[:1] + [SYSTEM],
                 [{"role": "tool", "content": "{{ not jinja }} {% raw %} 'quoted' \\ \n"}],
                 [{"role": "assistant", "content": ""}, {"role": "user", "content": "<|im_end|>"}]]


@pytest.mark.parametrize("system", ["You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                                    "Answer in Chinese.\nBe brief.", ""])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm_template_is_recognized_and_renders_like_transformers(transformers_render, system,
                                                                     add_generation_prompt):
    """SmolLM2's template is rendered as ChatML with its default system message, without
    Jinja, for any default message: the same text as transformers' rendering of its source."""
    template = SMOL_TEMPLATE.replace("{system}", system)
    assert _chatml_default_system(template) == system
    for messages in CONVERSATIONS:
        assert ours(messages, template, add_generation_prompt) == \
            transformers_render(messages, template, add_generation_prompt)
    # transformers refuses an empty conversation; jinja2 itself renders it
    assert ours([], template, add_generation_prompt) == \
        _compile_jinja(template).render(messages=[], add_generation_prompt=add_generation_prompt)


def test_a_template_unlike_smollms_goes_to_jinja(transformers_render):
    near_misses = [SMOL_TEMPLATE.replace("{system}", "it's"),            # a quote: Jinja's to read
                   SMOL_TEMPLATE.replace("{system}", "x") + "\n",
                   SMOL_TEMPLATE.replace("{system}", "x").replace("'<|im_end|>' + '\n'", "'<|im_end|>'")]
    for template in near_misses:
        assert _chatml_default_system(template) is None
    template = near_misses[2]              # and Jinja renders it as transformers does
    assert ours(CONVERSATION, template) == transformers_render(CONVERSATION, template)


def test_the_real_models_template_renders_without_importing_jinja2(real_model_path):
    import ast
    import subprocess
    import sys
    program = ("import sys\n"
               "from llama_np.checkpoint import load_tokenizer\n"
               "from llama_np.tokenizer.templates import render_chat, resolve_template\n"
               f"tokenizer = load_tokenizer({str(real_model_path)!r})\n"
               "print(repr(render_chat([{'role': 'user', 'content': 'hi'}], resolve_template(None, tokenizer))))\n"
               "print('jinja2' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    prompt, imported = out.splitlines()
    assert imported == "False"
    assert ast.literal_eval(prompt).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


# ----- errors and the sandbox --------------------------------------------------------------------

def test_template_errors_are_value_errors():
    with pytest.raises(ValueError, match="syntax error on line 1"):
        ours(CONVERSATION, "{% for m in messages %}{{ m['content'] }}")
    with pytest.raises(ValueError, match="roles must alternate"):
        ours([{"role": "assistant", "content": "hi"}], JINJA_TEMPLATES["llama2-like"])
    with pytest.raises(ValueError, match="chat template: failed: TypeError"):
        ours(CONVERSATION, "{{ messages[0]['content'] + 1 }}")
    with pytest.raises(ValueError, match="must be a dict with string 'role' and 'content'"):
        render_chat([{"role": "user"}], "chatml")


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__init__.__globals__ }}",
    "{{ messages.append({'role': 'user', 'content': 'x'}) }}",  # immutable: no changing the input
])
def test_sandbox_blocks_python_internals(attack):
    messages = [dict(m) for m in CONVERSATION]
    with pytest.raises(ValueError, match="sandbox forbids"):
        ours(messages, attack)
    assert messages == CONVERSATION


# ----- choosing a template -------------------------------------------------------------------------

class FakeTokenizer:
    def __init__(self, chat_template):
        self.chat_template, self.source = chat_template, "model.gguf"


def test_resolve_template(tmp_path):
    own = "{{ messages[0]['content'] }}"
    assert resolve_template(None, FakeTokenizer(own)) == own
    assert resolve_template(None, FakeTokenizer(None)) == "chatml"
    assert resolve_template("model", FakeTokenizer(own)) == own
    with pytest.raises(ValueError, match="model.gguf has no chat template"):
        resolve_template("model", FakeTokenizer(None))
    assert resolve_template("alpaca", FakeTokenizer(own)) == "alpaca"
    path = tmp_path / "mine.jinja"
    path.write_text("{{ 'hi' }}")
    assert resolve_template(str(path)) == "{{ 'hi' }}"
    with pytest.raises(ValueError, match="missing.jinja: cannot read"):
        resolve_template(str(tmp_path / "missing.jinja"))
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        resolve_template("vicuna")


def test_stop_strings():
    assert stop_strings_for("alpaca") == ["### Instruction:"]
    assert stop_strings_for("chatml") == ["<|im_end|>"]
    assert stop_strings_for(JINJA_TEMPLATES["llama2-like"]) == []  # ends with EOS, a token
