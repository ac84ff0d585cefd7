"""A request's prompt as token ids: chat messages through the model's chat template (as the
chat tool renders them), or a raw prompt as it is; refused (RequestError) when the template
rejects the conversation or the prompt leaves no room in the context for a reply."""
from llama_np.llama.conversation import chat_prompt_ids
from llama_np.serving.requests import RequestError
from llama_np.tokenizer.templates import resolve_template, stop_strings_for


class PromptBuilder:
    def __init__(self, tokenizer, template, ctx):
        self.tokenizer = tokenizer
        self.template = resolve_template(template, tokenizer)
        self.stop_strings = stop_strings_for(self.template)   # where an assistant turn ends
        self.ctx = ctx

    def chat_ids(self, messages):
        try:
            ids = chat_prompt_ids(self.tokenizer, self.template, messages)
        except ValueError as e:             # the template refused the conversation
            raise RequestError(f"the chat template cannot render these messages: {e}", "messages") from None
        return self._fits(ids, "messages")

    def completion_ids(self, prompt):
        try:
            ids = self.tokenizer.encode(prompt)
        except ValueError as e:             # text with no UTF-8 spelling (a lone surrogate)
            raise RequestError(f"prompt: {e}", "prompt") from None
        return self._fits(ids, "prompt")

    def _fits(self, ids, param):
        if not ids:
            raise RequestError("the prompt is empty", param)
        if len(ids) >= self.ctx:
            raise RequestError(f"the prompt has {len(ids)} tokens; this server's context holds {self.ctx}, "
                               f"with room for at least one more", param, "context_length_exceeded")
        return list(ids)
