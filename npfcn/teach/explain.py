"""``npfcn explain TOPIC``: each idea of the course computed on small numbers and drawn.

Every number printed is computed by npfcn (its reference path, ``npfcn/reference/``,
its layers, metrics and models), never typed into the text; the pictures go as PNG
into the output folder.  ``explain(topic)`` returns what it computed, for tests and
notebooks.
"""
import importlib
import inspect
import os
import sys

TOPICS = {
    "transposed-conv": "transposed_conv",
    "im2col": "im2col",
    "unpool": "unpool",
    "iou": "iou",
    "fcn8s": "fcn8s",
    "upsampling": "upsampling",
}


def explain(topic, output=".", out=None, **options):
    """Print the explanation of ``topic`` to ``out`` (stdout), write its pictures into
    ``output``; returns a dict of the computed values and the picture paths.

    options: ``size`` (fcn8s: input height and width), ``preset`` (transposed-conv),
    others as the topic takes them; None means the topic's default.
    """
    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}; choose one of {', '.join(TOPICS)}")
    os.makedirs(output, exist_ok=True)
    stream = out or sys.stdout

    def say(text=""):
        print(text, file=stream)

    module = importlib.import_module(f".topics.{TOPICS[topic]}", __package__)
    taken = inspect.signature(module.run).parameters
    return module.run(output, say, **{k: v for k, v in options.items()
                                      if v is not None and k in taken})
