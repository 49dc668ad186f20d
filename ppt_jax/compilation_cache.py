"""JAX's persistent compilation cache, on by default: a second start of the same configuration loads
every XLA program from disk instead of compiling it again.

The directory is the entry point's `--compilation_cache` (default `~/.cache/ppt_jax/jax`, or under
`$XDG_CACHE_HOME`), unless JAX's own `JAX_COMPILATION_CACHE_DIR` is set, which wins. JAX keys each
entry by the program, the jax/jaxlib versions, the XLA flags and the devices, so one cache serves
every run and work directory of a machine. Every program is cached whatever its compile time (JAX
skips those under 1 s by default; those are many small ones that still add up at start-up).

`Counter` counts, through `jax.monitoring`, the programs compiled and those loaded from the cache.
"""

import os

import jax

ENV_DIR = "JAX_COMPILATION_CACHE_DIR"
ENV_MIN_TIME = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def default_dir():
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "ppt_jax", "jax")


def enable(path):
    """Use the persistent cache in `path` ("" = off) unless JAX_COMPILATION_CACHE_DIR is set; returns
    the directory in use ("" = none)."""
    if os.environ.get(ENV_DIR):
        path = os.environ[ENV_DIR]          # jax has read it already
    elif path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    if path and not os.environ.get(ENV_MIN_TIME):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path or ""


class Counter:
    """Programs compiled vs. loaded from the persistent cache since `start()` (process-wide)."""

    _REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
    _HIT = "/jax/compilation_cache/cache_hits"

    def __init__(self):
        self.requests = self.hits = 0
        jax.monitoring.register_event_listener(self._event)

    def _event(self, event, **kwargs):
        del kwargs
        if event == self._REQUEST:
            self.requests += 1
        elif event == self._HIT:
            self.hits += 1

    @property
    def compiled(self):
        return self.requests - self.hits

    def summary(self):
        return (f"XLA programs: {self.compiled} compiled, {self.hits} loaded from the persistent "
                f"compilation cache")
