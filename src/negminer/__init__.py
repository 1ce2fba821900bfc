"""negminer: dual-encoder training with fresh hard negatives over large target sets.

``negminer.train(**options)``, ``negminer.evaluate(model, data)``, ``negminer.mine(model, data, out)``: the
Python API (negminer/api.py), validated as the command line is.
"""

__version__ = "0.1.0"


def __getattr__(name):  # the API loads torch and the parts only when first used
    if name in ("train", "evaluate", "mine", "make_config", "RunResult"):
        from negminer import api

        return getattr(api, name)
    raise AttributeError(f"module 'negminer' has no attribute {name!r}")
