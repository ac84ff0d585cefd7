"""The scheduler: a fixed number of slots, each with its own KV cache, stepped together by one
loop on its own thread (continuous batching).

    loop:
        admit    waiting requests take free slots (each slot's cache starts empty)
        prefill  prompt chunks of up to PREFILL_BUDGET tokens, the oldest waiting prompts
                 first, until the step has filled PREFILL_BUDGET, so that a long prompt never
                 stalls the running streams for more than a chunk or two
        decode   every slot past its prompt brings its last token; one batched step
                 (`llama.batch.decode_step`) gives each its next logits; each samples (the
                 rows in parallel threads), streams its text, and leaves when it is done
        a finished or cancelled request frees its slot for the next step

A request's tokens never depend on what else is served: the batched step computes each row
exactly as the row alone, each request samples with its own generator, and a prompt is
cut into chunks at places that depend on it alone, each of at least two tokens (the
prompt-sized products then sum as for the whole prompt at once). So a response equals the
one it gets alone, and the chat CLI's — except, for the CLI, with dynamic-NTK RoPE and a
prompt past the model's original context, whose frequencies depend on where a call ends.

The web side talks to the engine through `Job`: `Engine.submit(job)` queues it (or raises
QueueFull), the engine calls `job.emit(event)` from its thread — ("text", str) pieces,
then ("done", finish_reason) or ("error", message) — and `job.cancel()` (a client that hung
up) frees its slot at the next step.
"""
import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field

from llama_np import kernels
from llama_np.llama.batch import decode_step
from llama_np.llama.generation import StopStringFilter
from llama_np.llama.sampling import Sampler, SamplingSettings, apply_frequency_presence_penalties

# Prompt tokens filled per scheduler step, over one or more prompts: 64 tokens take about as
# long as a dozen decode steps of the default model on 2 cores (README, Speed), so running
# streams stutter at most that much while a new prompt is read.
PREFILL_BUDGET = 64


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is full."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclass
class Job:
    """One request: what to generate and where its events go."""
    prompt_ids: list
    sampling: SamplingSettings
    max_tokens: int
    stop: list = field(default_factory=list)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    emit: callable = print                   # called from the engine's thread with each event
    # filled by the engine
    completion_tokens: int = 0
    finish_reason: str | None = None
    submitted: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self._cancelled = threading.Event()

    def cancel(self):
        self._cancelled.set()

    @property
    def cancelled(self):
        return self._cancelled.is_set()


class Slot:
    """One sequence being served: its KV cache, its job, and where it is."""

    def __init__(self, model, ctx, kv_cache=None):
        self.cache = model.new_cache(ctx, kv_cache=kv_cache)
        self.job = None

    def start(self, job, tokenizer):
        self.job = job
        self.cache.reset()
        self.filled = 0                              # prompt tokens in the cache
        self.last_token = None                       # the token the next decode step brings
        self.seen = list(job.prompt_ids)             # what the repetition penalty counts
        self.counts = collections.Counter()          # generated tokens, for OpenAI's penalties
        self.sampler = Sampler(job.sampling)
        self.decoder = tokenizer.stream_decoder()
        self.stops = StopStringFilter(job.stop)

    @property
    def prefilling(self):
        return self.job is not None and self.filled < len(self.job.prompt_ids)

    def next_chunk(self):
        """The next prompt chunk: up to the next multiple of PREFILL_BUDGET positions, taking
        a lone remainder along, so that no chunk but a one-token prompt is a single token
        (one token would take the one-token kernels, whose sums run in another order than a
        prompt's). Where a prompt is cut depends on the prompt alone, never on what else is
        waiting (RoPE scaled by dynamic NTK depends on where a call ends)."""
        ids = self.job.prompt_ids
        end = (self.filled // PREFILL_BUDGET + 1) * PREFILL_BUDGET
        if len(ids) - end == 1:
            end += 1
        return ids[self.filled:end]


class Engine:
    """`n_slots` sequences served together by one scheduler thread (see the module doc)."""

    def __init__(self, model, tokenizer, *, n_slots=4, ctx=2048, max_waiting=32, kv_cache=None):
        """`kv_cache`: the slots' KV cache format ("f16", "f32", "q8_0"; None: the model's
        `kv_cache_format`, which the tools set from --kv-cache)."""
        self.model, self.tokenizer = model, tokenizer
        self.ctx = ctx
        self.slots = [Slot(model, ctx, kv_cache) for _ in range(n_slots)]
        self.max_waiting = max_waiting
        self.waiting = collections.deque()
        self.eos_ids = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llama_np-scheduler", daemon=True)
        self.steps = 0                                # decode steps so far (for the tests)
        self._samplers = concurrent.futures.ThreadPoolExecutor(max(1, kernels.get_num_threads()),
                                                               thread_name_prefix="llama_np-sampler")

    # -- the web side ------------------------------------------------------------------
    def start(self):
        self._thread.start()
        return self

    def submit(self, job):
        with self._wake:
            if self._stopping:
                raise EngineStopped("the server is shutting down")
            if len(self.waiting) >= self.max_waiting and not self._free_slot_count():
                raise QueueFull(f"all {len(self.slots)} slots are busy and {len(self.waiting)} "
                                f"requests are waiting")
            self.waiting.append(job)
            self._wake.notify()

    def wake(self):
        """Look again now (a job was cancelled)."""
        with self._wake:
            self._wake.notify()

    def status(self):
        with self._wake:
            busy = sum(slot.job is not None for slot in self.slots)
            return {"slots": len(self.slots), "busy": busy, "waiting": len(self.waiting)}

    def stop(self, timeout=10.0):
        """Cancel what is still running or waiting, and end the scheduler thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._samplers.shutdown(wait=False)

    # -- the scheduler thread ----------------------------------------------------------
    def _free_slot_count(self):
        return sum(slot.job is None for slot in self.slots)

    def _run(self):
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and all(s.job is None for s in self.slots):
                    self._wake.wait()
                if self._stopping:
                    break
                self._admit()
            try:
                self._step()
            except Exception as e:          # a bug must not take the server down: fail those running
                for slot in self.slots:
                    if slot.job is not None:
                        self._finish(slot, error=f"internal error: {type(e).__name__}: {e}")
        with self._wake:
            jobs = list(self.waiting) + [s.job for s in self.slots if s.job is not None]
            self.waiting.clear()
        for slot in self.slots:
            slot.job = None
        for job in jobs:
            job.emit(("error", "the server is shutting down"))

    def _admit(self):
        """Waiting jobs (oldest first) into free slots; cancelled ones are dropped."""
        for job in [j for j in self.waiting if j.cancelled]:
            self.waiting.remove(job)
            job.emit(("done", "cancelled"))
        for slot in self.slots:
            if slot.job is None and self.waiting:
                slot.start(self.waiting.popleft(), self.tokenizer)

    def _step(self):
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, "cancelled")
        budget = PREFILL_BUDGET                      # prompt chunks, the oldest requests first
        for slot in sorted((s for s in self.slots if s.prefilling), key=lambda s: s.job.submitted):
            while budget > 0 and slot.prefilling:
                chunk = slot.next_chunk()
                logits = self.model.forward(chunk, slot.cache, last_only=True)[-1]   # [V]
                slot.filled += len(chunk)
                budget -= len(chunk)
            if not slot.prefilling:
                self._advance(slot, self._sample(slot, logits))
            if budget <= 0:
                break
        decoding = [s for s in self.slots if s.job is not None and s.last_token is not None]
        if decoding:
            logits = decode_step(self.model, [s.last_token for s in decoding],
                                 [s.cache for s in decoding])                    # [B, V]
            self.steps += 1
            # each row with its own sampler: the same draws whichever thread makes them; greedy
            # rows (an arg-max) are not worth a thread's hand-over
            sampled = sum(not s.job.sampling.greedy for s in decoding) > 1
            tokens = (self._samplers.map(self._sample, decoding, logits) if sampled
                      else map(self._sample, decoding, logits))
            for slot, token in zip(decoding, list(tokens)):
                self._advance(slot, token)

    def _sample(self, slot, logits):
        """The slot's next token from its logits [V]."""
        job = slot.job
        logits = apply_frequency_presence_penalties(logits, slot.counts, job.frequency_penalty,
                                                    job.presence_penalty)
        return slot.sampler(logits, slot.seen)

    def _advance(self, slot, token):
        """Stream the slot's new token, or finish."""
        job = slot.job
        if token in self.eos_ids:
            return self._finish(slot, "stop")
        slot.seen.append(token)
        slot.counts[token] += 1
        job.completion_tokens += 1
        text = slot.stops.push(slot.decoder.push(token))
        if text:
            job.emit(("text", text))
        if slot.stops.stopped:
            return self._finish(slot, "stop")
        if job.completion_tokens >= job.max_tokens or slot.cache.length >= slot.cache.max_len:
            return self._finish(slot, "length")
        slot.last_token = token

    def _finish(self, slot, reason=None, error=None):
        job, slot.job = slot.job, None
        if error is not None:
            job.emit(("error", error))
            return
        if reason != "cancelled" and not slot.stops.stopped:
            # a reply cut off inside a multi-byte character ends before it, not with U+FFFD
            text = slot.stops.push(slot.decoder.flush().rstrip("\ufffd"))
            text += "" if slot.stops.stopped else slot.stops.flush()   # (a stop string in the tail)
            if text:
                job.emit(("text", text))
        job.finish_reason = reason
        job.emit(("done", reason))
