"""The training loop (trainer.py) and what it needs. Also callable: ``negminer.train(**options)`` is the Python
API's ``negminer.api.train`` (see negminer/_callable.py)."""

from negminer._callable import make_callable

make_callable(__name__, "train")
