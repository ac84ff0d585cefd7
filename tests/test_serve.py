"""The server (python -m llama_np.serve, llama_np.serving) through the real `openai` client: the
same answers as the chat tool, streaming, continuous batching that changes no answer, bad
requests refused with OpenAI's error body, hang-ups that free their slots, a bounded load
test, SIGTERM. Loopback only; servers on tiny random models (tests/conftest.py) run
in-process on a free port, the tool itself as a subprocess."""
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from llama_np.checkpoint import load_model  # noqa: E402
from llama_np.serving.app import build_app  # noqa: E402
from llama_np.serving.engine import Engine  # noqa: E402
from llama_np.serving.requests import Defaults  # noqa: E402

from conftest import REPO  # noqa: E402

GREEDY = {"temperature": 0}
MESSAGE = "Tell me about llamas."
DEFAULTS = Defaults(temperature=0.2, top_p=0.9, top_k=40, repetition_penalty=1.3, max_tokens=24)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, llama_sp_model):
    """A tiny random LLaMA with the LLaMA SentencePiece tokenizer (no chat template of its
    own: chatml)."""
    import shutil

    from conftest import save_tiny_llama
    folder = tmp_path_factory.mktemp("serve") / "tiny"
    save_tiny_llama(folder, tied=False, vocab=32000, hidden=64, ffn=128)
    shutil.copyfile(llama_sp_model, folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_model(str(tiny_folder))


@contextlib.contextmanager
def serving(model, tokenizer, *, slots=8, queue=32, ctx=128, step_delay=0.0, kv_cache="f16"):
    """A server on a free loopback port, in this process; yields (base URL, engine).
    `step_delay` slows every scheduler step, so that requests overlap on a tiny model;
    `kv_cache` is the tools' default, as `python -m llama_np.serve` (and chat) would use."""
    engine = Engine(model, tokenizer, n_slots=slots, ctx=ctx, max_waiting=queue, kv_cache=kv_cache)
    if step_delay:
        step = engine._step
        engine._step = lambda: (time.sleep(step_delay), step())
    app = build_app(engine, model_name="tiny", defaults=DEFAULTS)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(c, content=MESSAGE, **kw):
    kw = {"max_tokens": 24, **kw}
    return c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kw)


def wait_idle(base, timeout=5.0):
    """/health until no slot is busy and nothing waits; returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(base + "/health").json()
        if status["busy"] == 0 and status["waiting"] == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tiny):
    with serving(*tiny) as (base, engine):
        yield base, engine


# ----- the answers -------------------------------------------------------------------

def chat_cli(model, message, *extra):
    result = subprocess.run([sys.executable, "-m", "llama_np.chat", "--model", str(model), "--prompt", message,
                             "--temperature", "0", "--threads", "2", *extra],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def test_greedy_chat_equals_the_chat_tool(tiny_folder, tiny):
    expected = chat_cli(tiny_folder, MESSAGE, "--ctx", "128", "--max-new-tokens", "40", "--kv-cache", "f16")
    with serving(*tiny) as (base, _):
        reply = chat(client(base), max_tokens=40, **GREEDY)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0


@pytest.mark.slow
def test_greedy_chat_equals_the_chat_tool_on_the_real_model(real_model_path, real_model):
    question = "What is the capital of France?"
    expected = chat_cli(real_model_path, question, "--max-new-tokens", "64", "--kv-cache", "f16")
    with serving(*real_model, slots=2, ctx=2048) as (base, _):
        reply = chat(client(base), question, max_tokens=64, **GREEDY)
    assert reply.choices[0].message.content == expected
    assert "Paris" in expected


def test_streamed_deltas_join_to_the_whole_reply(server):
    base, _ = server
    c = client(base)
    for kw in (GREEDY, {"temperature": 0.8, "seed": 7}):
        whole = chat(c, **kw)
        chunks = list(chat(c, stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == whole.choices[0].message.content
        finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finishes == [whole.choices[0].finish_reason]
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_the_stream_ends_with_done(server):
    base, _ = server
    with httpx.stream("POST", base + "/v1/chat/completions", timeout=30,
                      json={"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_raw_completion_and_models(server):
    base, _ = server
    c = client(base)
    reply = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, **GREEDY)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 8
    streamed = "".join(ch.choices[0].text for ch in
                       c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, stream=True,
                                            **GREEDY))
    assert streamed == reply.choices[0].text
    assert [m.id for m in c.models.list()] == ["tiny"]


def test_max_tokens_and_stop(server):
    base, _ = server
    c = client(base)
    long = chat(c, max_tokens=20, **GREEDY, frequency_penalty=0.0)
    assert long.usage.completion_tokens <= 20
    short = chat(c, max_tokens=3, **GREEDY)
    assert short.usage.completion_tokens <= 3
    text = long.choices[0].message.content
    if len(text) > 6:                                         # a stop string cuts the reply before it
        stop = text[3:6]
        cut = chat(c, max_tokens=20, stop=[stop, "never appears"], **GREEDY)
        assert cut.choices[0].message.content == text[:text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible_and_penalties_change_it(server):
    base, _ = server
    c = client(base)
    a, b = (chat(c, temperature=1.0, seed=3).choices[0].message.content for _ in range(2))
    assert a == b
    plain = chat(c, max_tokens=24, **GREEDY).choices[0].message.content
    penalized = chat(c, max_tokens=24, presence_penalty=2.0, frequency_penalty=2.0, **GREEDY)
    assert penalized.choices[0].message.content != plain or len(set(plain.split())) == len(plain.split())


def test_concurrent_requests_equal_the_same_requests_alone(server):
    """16 requests over 8 slots, at once: every answer is the one the request gets alone."""
    base, engine = server
    c = client(base)
    requests = [dict(content=f"{MESSAGE} ({i})" * (1 + i % 3), max_tokens=8 + i, temperature=0.3 * (i % 4),
                     seed=i) for i in range(16)]
    alone = [chat(c, **r).choices[0].message.content for r in requests]
    steps = engine.steps
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: chat(c, **r).choices[0].message.content, requests))
    assert together == alone
    assert engine.steps - steps < sum(r["max_tokens"] for r in requests)   # they did share steps
    assert wait_idle(base)["busy"] == 0


def test_concurrent_requests_of_very_different_lengths(tiny):
    """A long prompt beside short ones, in a context past the caches' first room (256
    positions): each slot's cache grows to its own size, and they still step together."""
    with serving(*tiny, slots=3, ctx=1024, step_delay=0.002) as (base, engine):
        c = client(base)
        requests = [dict(content="llamas and alpacas " * 100, max_tokens=30),
                    dict(content=MESSAGE, max_tokens=30), dict(content="Hi.", max_tokens=30)]
        alone = [chat(c, temperature=0, **r).choices[0].message.content for r in requests]
        steps = engine.steps
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda r: chat(c, temperature=0, **r).choices[0].message.content, requests))
        assert engine.steps - steps < 90                                 # they did share steps
        assert len({slot.cache.capacity for slot in engine.slots}) > 1
    assert together == alone


@pytest.mark.slow
def test_concurrent_requests_on_the_real_model_equal_the_same_requests_alone(real_model):
    """The default model, the paper's sampling with seeds and greedy: 12 requests over 6
    slots at once, each the answer it gets alone."""
    with serving(*real_model, slots=6, ctx=512) as (base, _):
        c = client(base)
        requests = [dict(content=f"Name {i + 2} animals that live in {place}.", max_tokens=12 + i % 5,
                         **({"temperature": 0} if i % 3 == 0 else {"seed": i}))
                    for i, place in enumerate(["the sea", "forests", "deserts", "the arctic", "rivers", "caves"] * 2)]
        alone = [chat(c, **r).choices[0].message.content for r in requests]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            together = list(pool.map(lambda r: chat(c, **r).choices[0].message.content, requests))
    assert together == alone


# ----- faults ------------------------------------------------------------------------

BAD = [
    ("not JSON", b"{not json", "invalid_request_error"),
    ("no messages", {"model": "tiny"}, "messages"),
    ("max_tokens -5", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, "max_tokens"),
    ("temperature 'hot'", {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ("messages not a list", {"messages": {"role": "user", "content": "hi"}}, "messages"),
    ("too long a prompt", {"messages": [{"role": "user", "content": "llama " * 400}]}, "messages"),
    ("n = 2", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ("a bad role", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("NaN", b'{"messages": [{"role": "user", "content": "hi"}], "top_p": NaN}', "invalid_request_error"),
    ("a list body", b"[1, 2]", "invalid_request_error"),
    ("top_p 0", {"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    ("a boolean max_tokens", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": True}, "max_tokens"),
    ("stop of numbers", {"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, "stop"),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("a completion without prompt", {"max_tokens": 3}, "prompt"),
    ("a lone surrogate", b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages"),
    ("a completion with a lone surrogate", b'{"prompt": "hi \\udc80"}', "prompt"),
]


@pytest.mark.parametrize("what, body, param", BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_gets_a_4xx_with_a_json_error(server, what, body, param):
    base, _ = server
    path = "/v1/completions" if what.startswith("a completion") else "/v1/chat/completions"
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(base + path, timeout=30, **kw)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param or error["type"] == param
    assert chat(client(base), max_tokens=2).choices[0].message is not None        # still serving


FIELDS = ["temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty",
          "max_tokens", "stop", "seed", "n", "stream", "stream_options", "model", "messages", "logprobs"]
ODD_VALUES = ["x", -1, 0, 3.5, 1e308, 10 ** 30, [], {}, True, None, [1, "a"], {"include_usage": "yes"}]


def test_odd_values_in_every_field_get_an_answer_or_a_400(server):
    """Every field with values of every JSON kind: a 200 or a 400 with OpenAI's error body,
    never a 500, and the server goes on serving."""
    base, _ = server
    for field in FIELDS:
        for value in ODD_VALUES:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
            r = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
            assert r.status_code in (200, 400), (field, value, r.status_code, r.text)
            if r.status_code == 400:
                assert r.json()["error"]["message"]
    assert wait_idle(base)["busy"] == 0
    assert chat(client(base), max_tokens=2).choices[0].message is not None


def test_bad_requests_through_the_openai_client_raise_its_errors(server):
    base, _ = server
    c = client(base)
    with pytest.raises(openai.BadRequestError) as e:
        chat(c, max_tokens=-5)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages="hello")
    with pytest.raises(openai.BadRequestError) as e:
        chat(c, "llama " * 400)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="tiny", input="x")


def test_a_full_queue_answers_503_with_retry_after(tiny):
    # The first request holds the one slot for 40 slowed steps (≥ 4 s) before the other three
    # are sent together, through one client (a client made per request costs a busy machine
    # long enough that the first could finish before the last is sent): one waits, two are refused.
    with serving(*tiny, slots=1, queue=1, step_delay=0.1) as (base, _), httpx.Client(timeout=60) as http:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "temperature": 0}

        def post(_):
            return http.post(base + "/v1/chat/completions", json=body)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = pool.submit(post, None)
            deadline = time.monotonic() + 20
            while http.get(base + "/health").json()["busy"] == 0:
                assert time.monotonic() < deadline, "the first request never took its slot"
                time.sleep(0.01)
            others = list(pool.map(post, range(3)))
            assert first.result().status_code == 200
        codes = sorted(r.status_code for r in others)
        assert codes == [200, 503, 503], codes          # one waited for the slot, two were refused
        answers = [first.result()] + others
        busy = [r for r in answers if r.status_code == 503]
        assert all(r.headers["retry-after"] and r.json()["error"]["code"] == "server_busy" for r in busy)
        assert wait_idle(base)["busy"] == 0


def test_clients_that_hang_up_free_their_slots(tiny):
    """Eight streams closed after their first piece of text: their slots are free at once,
    and eight more requests at once are all answered."""
    with serving(*tiny, slots=8, step_delay=0.02) as (base, engine):
        c = client(base)
        long = dict(max_tokens=100, temperature=1.0, seed=1)   # 100 steps of 20 ms: 2 s if not cancelled

        def hang_up(i):
            stream = chat(c, f"{MESSAGE} {i}", stream=True, **long)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            stream.close()

        steps = engine.steps
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(hang_up, range(8)))
        status = wait_idle(base, timeout=3.0)
        assert status["busy"] == 0, status
        assert engine.steps - steps < 50                        # cancelled, not generated to the end
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: chat(c, f"{MESSAGE} {i}", max_tokens=5), range(8)))
        assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)
        assert all(slot.job is None for slot in engine.slots)


def test_a_client_that_hangs_up_before_its_answer_is_cancelled(tiny):
    with serving(*tiny, slots=1, step_delay=0.02) as (base, engine):
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "temperature": 1.0}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(base + "/v1/chat/completions", json=body, timeout=0.3)
        assert wait_idle(base, timeout=3.0)["busy"] == 0
        assert engine.steps < 60                                # 100 steps if it had not been cancelled


def test_bounded_load_nothing_lost_no_slot_leaked(tiny):
    """60 requests from 24 threads on 4 slots and a queue of 8, some streamed, some hanging
    up: each is answered (200) or refused (503); afterwards nothing is busy or waiting."""
    with serving(*tiny, slots=4, queue=8, step_delay=0.002) as (base, engine):
        def one(i):
            body = {"messages": [{"role": "user", "content": f"{MESSAGE} {i}"}], "max_tokens": 4 + i % 20,
                    "stream": i % 2 == 0, "temperature": 0.5, "seed": i}
            try:
                with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
                    if i % 7 == 3:                        # hangs up
                        return "hung up"
                    r.read()
                    if r.status_code == 200 and body["stream"]:
                        assert r.text.rstrip().endswith("data: [DONE]")
                    return r.status_code
            except httpx.HTTPError as e:
                return f"failed: {e!r}"

        deadline = time.monotonic() + 120
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            outcomes = list(pool.map(one, range(60)))
        assert time.monotonic() < deadline
        assert all(o in (200, 503, "hung up") for o in outcomes), outcomes
        assert outcomes.count(200) >= 8                      # at least the slots and the queue
        assert wait_idle(base)["busy"] == 0
        assert all(slot.job is None for slot in engine.slots) and not engine.waiting


# ----- the tool ----------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tool(folder, port, *extra):
    process = subprocess.Popen([sys.executable, "-m", "llama_np.serve", "--model", str(folder), "--port", str(port),
                                "--threads", "2", "--ctx", "128", *extra],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_tool_exits_cleanly_on_sigterm_and_ctrl_c(tiny_folder, sig):
    port = free_port()
    process = start_tool(tiny_folder, port, "--parallel", "2", "--kv-cache", "f16")
    try:
        base = f"http://127.0.0.1:{port}"
        reply = chat(client(base), max_tokens=4)
        assert reply.choices[0].message.role == "assistant"
        with httpx.stream("POST", base + "/v1/chat/completions", timeout=30,
                          json={"messages": [{"role": "user", "content": "hi"}], "stream": True,
                                "max_tokens": 100}) as r:
            lines = r.iter_lines()
            next(lines)
            process.send_signal(sig)
            rest = list(lines)                                # finished, or cut when it stops
        assert process.wait(timeout=20) == 0
        assert all(not line or line.startswith("data: ") for line in rest)
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_tool_without_a_model_fails_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llama_np.serve", "--model", str(tmp_path / "missing.gguf"),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# ----- the chat page -----------------------------------------------------------------

def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            path = os.path.join(folder, name)
            if os.access(path, os.X_OK):
                return path
    return None


def test_the_chat_page_is_one_self_contained_file(server):
    base, _ = server
    r = httpx.get(base + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "/v1/chat/completions" in page and "tokens/s" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page   # no CDN


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    it reads commands from fd 3 and answers on fd 4, JSON messages ending in a NUL byte)."""

    def __init__(self, profile):
        to_chrome, self._commands = os.pipe()
        self._answers, from_chrome = os.pipe()

        def child_fds():                              # both out of the way first, then to 3 and 4
            import fcntl
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome, from_chrome)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, pass_fds=(3, 4))
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id = b"", 0

    def send(self, method, session=None, **params):
        import json
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:                                   # events may come first
            while b"\0" not in self._buffer:
                chunk = os.read(self._answers, 1 << 16)
                assert chunk, "Chromium closed its pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                assert "error" not in answer, answer
                return answer["result"]

    def open(self, url):
        target = self.send("Target.createTarget", url=url)["targetId"]
        return self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, session, expression):
        return self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"].get("value")

    def close(self):
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        os.close(self._commands)
        os.close(self._answers)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.skipif(chromium() is None, reason="no Chromium installed")
def test_the_chat_page_streams_two_turns_in_a_headless_browser(tiny, tmp_path):
    """Chromium loads the page, which asks two questions in turn (/?q=..&q=..), streaming
    each reply; the page then holds both turns, the replies, and a tokens/s figure. While a
    reply streams, the page shows it growing."""
    with serving(*tiny, step_delay=0.05) as (base, _):
        browser = Chromium(tmp_path / "profile")
        try:
            page = browser.open(base + "/?q=Hello%20there&q=And%20then%3F")
            deadline, lengths = time.monotonic() + 60, set()
            while browser.evaluate(page, "document.body.dataset.done") != "2":
                assert time.monotonic() < deadline, browser.evaluate(page, "document.body.innerHTML")
                lengths.add(browser.evaluate(page, "(document.querySelector('.assistant') || {textContent: ''})"
                                                   ".textContent.length"))
                time.sleep(0.05)
            users = browser.evaluate(page, "[...document.querySelectorAll('.user')].map(e => e.textContent)")
            replies = browser.evaluate(page, "[...document.querySelectorAll('.assistant')]"
                                             ".map(e => [e.dataset.tokens, e.dataset.finish, e.textContent])")
            rate = browser.evaluate(page, "document.getElementById('speed').dataset.tokensPerSecond")
        finally:
            browser.close()
    assert users == ["Hello there", "And then?"]
    assert len(replies) == 2 and all(int(tokens) > 0 and finish in ("stop", "length") and "tokens/s" in text
                                     for tokens, finish, text in replies), replies
    assert float(rate) > 0
    assert len(lengths) > 2                          # the first reply was seen growing, not all at once


@pytest.mark.skipif(chromium() is None, reason="no Chromium installed")
def test_the_stop_button_ends_a_reply_and_frees_its_slot(tiny, tmp_path):
    with serving(*tiny, slots=1, step_delay=0.05) as (base, engine):
        browser = Chromium(tmp_path / "profile")
        try:
            page = browser.open(base + "/")
            deadline = time.monotonic() + 30
            while browser.evaluate(page, "document.getElementById('model').textContent") != "tiny":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            browser.evaluate(page, "document.getElementById('system').value = ''; "
                                   "document.getElementById('max_tokens').value = '100'; "
                                   "document.getElementById('temperature').value = '1'; "
                                   "document.getElementById('input').value = 'Tell me a long story'; "
                                   "document.getElementById('form').requestSubmit()")
            while not browser.evaluate(page, "(document.querySelector('.assistant') || {textContent: ''}).textContent"):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            steps = engine.steps
            browser.evaluate(page, "document.getElementById('stop').click()")
            while browser.evaluate(page, "(document.querySelector('.assistant').dataset.finish || '')") != "stopped":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert wait_idle(base, timeout=3.0)["busy"] == 0
            assert engine.steps - steps < 40                      # not the 100 steps of the whole reply
            assert browser.evaluate(page, "document.getElementById('send').disabled") is False
        finally:
            browser.close()
