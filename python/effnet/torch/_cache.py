"""Per-module caches of C plans and converted weights, dropped (not shared) by
``copy.deepcopy`` and pickling so that no two modules ever own the same handle."""


class Cache(dict):
    """A dict of cached plans, keyed by input shape, that copies as an empty one."""

    def __deepcopy__(self, memo):
        return Cache()

    def __copy__(self):
        return Cache()

    def __reduce__(self):
        return (Cache, ())


def version_key(t):
    """What identifies the contents of parameter ``t``: its version counter (bumped by
    every in-place change, e.g. an optimizer step) and its storage address."""
    return (t._version, t.data_ptr())
