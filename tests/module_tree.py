"""Test helper: every npfcn layer inside a model, found by walking its attributes."""
from npfcn.layers import Module


def modules_of(obj, seen=None):
    """Every npfcn.layers.Module reachable from obj's attributes (dicts, lists, tuples)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found = [obj] if isinstance(obj, Module) else []
    children = vars(obj).values() if hasattr(obj, "__dict__") else ()
    if isinstance(obj, dict):
        children = obj.values()
    elif isinstance(obj, (list, tuple)):
        children = obj
    for child in children:
        if isinstance(child, (Module, dict, list, tuple)) or hasattr(child, "forward"):
            found += modules_of(child, seen)
    return found
