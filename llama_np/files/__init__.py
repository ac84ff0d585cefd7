"""Files: writing them safely, reading users' files, and where models and data come from.

    atomic.py   atomic writes: a temporary name in the same folder, then one rename
    text.py     reading a user's file whole (UTF-8 text, bytes or JSON) with one-line errors
    figure.py   the tools' PNG plots: a Figure on the Agg canvas, saved atomically
                (matplotlib imported only when a figure is made)
    hub.py      the default model and the public data files: names, URLs, sha256, the
                LLAMA_NP_DATA mirror and the LLAMA_NP_CACHE cache (docs/data.md)

Imports: the standard library only. Everything else in llama_np may build on this package.
"""
