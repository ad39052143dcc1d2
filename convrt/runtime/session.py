"""Moved to ``convrt.api`` (issue #19): this alias keeps ``from convrt.runtime.session import X``
working for a while.  Resolved lazily (PEP 562) so the runtime never imports the api itself."""

import importlib


def __getattr__(name):
    return getattr(importlib.import_module("convrt.api"), name)
