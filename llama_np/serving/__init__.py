"""Serving: an OpenAI-compatible HTTP server with continuous batching, and a chat page.

    engine.py    the scheduler: slots with their own KV caches, one loop stepping them all
                 together (`llama.batch.decode_step`), prompts filled in chunks between
                 decode steps, a bounded queue, cancellation
    requests.py  OpenAI request bodies, checked field by field; OpenAI's error body
    prompts.py   chat messages (the model's template) or a raw prompt → token ids, fitted to
                 the context
    app.py       the endpoints on Starlette: /v1/chat/completions, /v1/completions (SSE
                 streaming), /v1/models, /health, and the chat page at /
    static/chat.html  the chat page: one file, no build step, nothing fetched from elsewhere

Needs the `serve` extra (starlette, uvicorn): `pip install -e ".[serve]"`; only app.py
imports starlette. Imports: `llama_np.llama`, `llama_np.tokenizer` and `llama_np.kernels`
(the thread count); the tool (`python -m llama_np.serve`) loads the model and runs uvicorn.
"""
