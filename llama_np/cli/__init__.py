"""What the command-line tools (the modules at the top of llama_np) share.

    common.py  the model and sampling flags, thread setup, loading a model for inference,
               and the rule that a user's mistake ends in one line on stderr and a
               non-zero exit, never a traceback

Imports: any subpackage. Within llama_np only the tools import this package.
"""
