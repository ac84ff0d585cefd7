"""`python -m llama_np.serve`: an OpenAI-compatible server for a LLaMA model, with a chat page.

POST /v1/chat/completions and /v1/completions (streamed as server-sent events with
"stream": true), GET /v1/models, /health, and the chat page at http://HOST:PORT/.
`--parallel N` sequences are decoded together in one batched step (continuous batching);
further requests wait in a queue of `--queue` (then 503). Ctrl-C or SIGTERM stops taking
requests, lets the running ones finish for up to `--shutdown-timeout` seconds, and exits.
Needs the serve extra: pip install -e ".[serve]".
"""
import argparse
import signal
import sys

from llama_np.cli import common as cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m llama_np.serve",
        description="Serve a LLaMA model over HTTP with OpenAI's API (chat and raw completions, "
                    "streaming), several requests decoded together, and a chat page at /.")
    cli.add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 opens it to the network (default: %(default)s)")
    parser.add_argument("--port", type=cli.positive_int, default=8080, help="TCP port (default: %(default)s)")
    parser.add_argument("--parallel", type=cli.positive_int, default=4,
                        help="slots: requests decoded together, each with its own KV cache of --ctx "
                             "positions (default: %(default)s)")
    parser.add_argument("--queue", type=cli.non_negative_int, default=32,
                        help="requests that may wait for a slot; more get 503 (default: %(default)s)")
    parser.add_argument("--template", default=None,
                        help="chat template: 'model' (the model's own, the default when it has one), "
                             "'chatml', 'alpaca' (Chinese-Alpaca), or a .jinja file")
    parser.add_argument("--model-name", default=None,
                        help="the model id /v1/models reports (default: the model file's name)")
    parser.add_argument("--shutdown-timeout", type=cli.non_negative_float, default=5.0,
                        help="on Ctrl-C / SIGTERM, seconds running requests may take to finish "
                             "before they are cancelled (default: %(default)s)")
    cli.add_sampling_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.set_threads(args.threads)
    try:
        import uvicorn
        from llama_np.serving.app import build_app
    except ImportError as e:
        raise RuntimeError(f"serving needs the serve extra ({e.name} is missing): "
                           f"pip install -e \".[serve]\"") from None
    import os

    from llama_np.serving.engine import Engine
    from llama_np.serving.requests import Defaults

    model, tokenizer = cli.load_for_inference(args)
    ctx = min(args.ctx, model.config.max_context)     # as the chat tool's conversation
    engine = Engine(model, tokenizer, n_slots=args.parallel, ctx=ctx, max_waiting=args.queue)
    defaults = Defaults(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        repetition_penalty=args.repetition_penalty, max_tokens=args.max_new_tokens,
                        seed=args.seed)
    name = args.model_name or os.path.basename(os.path.normpath(str(args.model)))
    app = build_app(engine, model_name=name, defaults=defaults, template=args.template)
    print(f"llama_np serve: {name}, {args.parallel} slots of {ctx} tokens, "
          f"http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again for the
    # handler it found: let SIGTERM's then be a clean exit (SIGINT's is KeyboardInterrupt)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=args.shutdown_timeout)
    return 0


def _exit_cleanly(signum, frame):
    raise SystemExit(0)


if __name__ == "__main__":
    cli.run(main)
