"""The HTTP side: OpenAI's endpoints on Starlette, in front of one `Engine`.

    GET  /                      the chat page (static/chat.html)
    GET  /health                {"status": "ok", "slots", "busy", "waiting"}
    GET  /v1/models             the one model served
    POST /v1/chat/completions   messages → the model's chat template → a reply
    POST /v1/completions        a raw prompt → its continuation

With "stream": true the reply comes as server-sent events in OpenAI's chunk format, one
`data: {json}` per piece of text, then a last chunk with the finish_reason (and with
stream_options.include_usage, one with the token counts), then `data: [DONE]`.

Faults answer, never crash: a bad request → 400 (413 for a huge body) with OpenAI's error
body (`requests.RequestError`); every slot busy and the queue full → 503 with Retry-After;
an unknown path → 404, a wrong method → 405, anything unexpected → 500, all as JSON. A client
that hangs up — while waiting, during its prompt or mid-stream — has its job cancelled at
once, which frees its slot at the scheduler's next step.
"""
import asyncio
import contextlib
import json
import time
import uuid
from importlib import resources

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from llama_np.llama.sampling import SamplingSettings
from llama_np.serving.engine import EngineStopped, Job, QueueFull
from llama_np.serving.prompts import PromptBuilder
from llama_np.serving.requests import RequestError, parse_body, parse_chat, parse_completion

RETRY_AFTER_SECONDS = 1


def error_response(error: RequestError, headers=None):
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def build_app(engine, *, model_name, defaults, template=None, on_shutdown=None):
    """The Starlette app serving `engine` (started with the app, stopped with it)."""
    prompts = PromptBuilder(engine.tokenizer, template, engine.ctx)
    page = resources.files("llama_np.serving").joinpath("static/chat.html").read_text(encoding="utf-8")

    async def index(request):
        return HTMLResponse(page)

    async def health(request):
        return JSONResponse({"status": "ok", **engine.status()})

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "llama_np"}]})

    async def chat_completions(request):
        return await complete(request, chat=True)

    async def completions(request):
        return await complete(request, chat=False)

    async def complete(request, chat):
        try:
            body = parse_body(await request.body())
            parsed = (parse_chat if chat else parse_completion)(body, defaults)
            prompt_ids = await run_in_threadpool(
                prompts.chat_ids if chat else prompts.completion_ids,
                parsed.messages if chat else parsed.prompt)
        except RequestError as e:
            return error_response(e)
        stop = (prompts.stop_strings if chat else []) + parsed.stop
        try:
            settings = SamplingSettings(temperature=parsed.temperature, top_k=parsed.top_k, top_p=parsed.top_p,
                                        repetition_penalty=parsed.repetition_penalty, seed=parsed.seed)
        except ValueError as e:
            return error_response(RequestError(str(e)))
        events = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job = Job(prompt_ids=prompt_ids, sampling=settings,
                  max_tokens=min(parsed.max_tokens, engine.ctx - len(prompt_ids)), stop=stop,
                  frequency_penalty=parsed.frequency_penalty, presence_penalty=parsed.presence_penalty,
                  emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        try:
            engine.submit(job)
        except QueueFull as e:
            return error_response(RequestError(str(e), code="server_busy", status=503, kind="server_error"),
                                  headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        except EngineStopped as e:
            return error_response(RequestError(str(e), code="shutting_down", status=503, kind="server_error"),
                                  headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        reply = Reply(chat, model_name, parsed, len(prompt_ids))
        if parsed.stream:
            return EventStream(job, events, reply, engine)
        return await whole_reply(request, job, events, reply, engine)

    async def not_found(request, exc):
        kind = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        return error_response(RequestError(exc.detail, code=kind, status=exc.status_code))

    async def server_error(request, exc):
        return error_response(RequestError(f"internal error: {type(exc).__name__}", code="internal_error",
                                           status=500, kind="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.stop)
            if on_shutdown is not None:
                on_shutdown()

    return Starlette(
        routes=[Route("/", index), Route("/health", health), Route("/v1/models", models),
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/completions", completions, methods=["POST"])],
        exception_handlers={HTTPException: not_found, Exception: server_error},
        lifespan=lifespan)


class Reply:
    """OpenAI's response objects for one request: whole, or as stream chunks."""

    def __init__(self, chat, model_name, parsed, prompt_tokens):
        self.chat, self.model, self.parsed = chat, parsed.model or model_name, parsed
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens

    def usage(self, job):
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": job.completion_tokens,
                "total_tokens": self.prompt_tokens + job.completion_tokens}

    def whole(self, text, job):
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": job.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": job.finish_reason}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage(job)}

    def chunk(self, text=None, finish_reason=None, first=False, usage=None):
        if usage is not None:
            choices = []
        elif self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        else:
            choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
        chunk = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                 "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode("utf-8") + b"\n\n"


async def watch_disconnect(receive):
    """Return when the client has gone (ASGI http.disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def whole_reply(request, job, events, reply, engine):
    """Wait for the whole reply, cancelling the job if the client hangs up first."""
    parts = []

    async def collect():
        while True:
            event = await events.get()
            if event[0] == "text":
                parts.append(event[1])
            else:
                return event

    watcher = asyncio.ensure_future(watch_disconnect(request.receive))
    collector = asyncio.ensure_future(collect())
    try:
        done, _ = await asyncio.wait({watcher, collector}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()
            job.cancel()
            engine.wake()
    if collector not in done:
        return Response(status_code=499)            # nobody is listening any more
    event = collector.result()
    if event[0] == "error":
        return error_response(RequestError(event[1], code="generation_failed", status=500, kind="server_error"))
    return JSONResponse(reply.whole("".join(parts), job))


class EventStream(Response):
    """The reply as server-sent events, while watching for the client to hang up: then (or on
    any failure to send) the job is cancelled and the stream ends."""

    def __init__(self, job, events, reply, engine):
        self.status_code, self.background = 200, None
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        self.job, self.events, self.reply, self.engine = job, events, reply, engine

    async def __call__(self, scope, receive, send):
        async def stream(cancel_scope):
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.reply.chunk(first=True), "more_body": True})
            while True:
                event = await self.events.get()
                if event[0] == "text":
                    body = self.reply.chunk(text=event[1])
                elif event[0] == "done":
                    body = self.reply.chunk(finish_reason=event[1])
                    if self.reply.parsed.include_usage:
                        body += self.reply.chunk(usage=self.reply.usage(self.job))
                    body += b"data: [DONE]\n\n"
                else:                                   # an error after the stream began
                    message = {"error": {"message": event[1], "type": "server_error", "param": None,
                                         "code": "generation_failed"}}
                    body = b"data: " + json.dumps(message).encode() + b"\n\ndata: [DONE]\n\n"
                last = event[0] != "text"
                await send({"type": "http.response.body", "body": body, "more_body": not last})
                if last:
                    break
            cancel_scope.cancel()

        async def watch(cancel_scope):
            await watch_disconnect(receive)
            cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stream, tasks.cancel_scope)
                tasks.start_soon(watch, tasks.cancel_scope)
        except* OSError:                                # the connection broke while sending
            pass
        finally:
            if self.job.finish_reason is None:
                self.job.cancel()
                self.engine.wake()
