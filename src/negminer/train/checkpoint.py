"""Checkpoints: safetensors for tensors, JSON for everything else; never pickle.

Layout of ``RUN_DIR/checkpoint/``: ``model.safetensors`` (shared weights stored once),
``optimizer.safetensors`` + ``trainer.json`` (step, data position, scheduler, counters, optimizer
hyper-parameters, every RNG state, each part's JSON state under ``parts``), ``parts.safetensors``
(each part's tensors under its name: ``sampler/cache.rows``, ``batcher/batcher.labels``,
``refresher.corrector/...``, ``memory/bank.q``), ``store.npy`` + ``store_age.npy`` (the target store,
written chunk by chunk or copied in the kernel, never cloned in RAM). A checkpoint is written to a
temporary folder, fsync'ed and renamed into place (``fileio.atomic_dir``), so a kill at any
moment leaves either the old or the new checkpoint, whole. The previous checkpoint stays as
``checkpoint.prev``: when the newest cannot be read (a disk fault, a truncated copy), ``--resume``
says which file is broken and falls back to it (``usable_checkpoints``, ``verify``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict, dict]:
    """All global RNG states: tensors (torch) and JSON (python, numpy)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, st, g = meta["python"]
    random.setstate((v, tuple(st), g))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))


def part_states(parts: dict) -> tuple[dict, dict]:
    """Each part's ``state() -> (tensors, JSON)`` under its name: (``{name/key: tensor}``, ``{name: JSON}``)."""
    tensors, meta = {}, {}
    for name, part in parts.items():
        t, m = part.state()
        tensors.update({f"{name}/{k}": v.contiguous() for k, v in t.items()})
        if m:
            meta[name] = m
    return tensors, meta


def load_parts(parts: dict, tensors: dict, meta: dict) -> None:
    """Give each part back its own tensors (names without the prefix) and JSON."""
    for name, part in parts.items():
        own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + "/")}
        part.load_state(own, meta.get(name, {}))


def save_checkpoint(run_dir: Path, model, optimizer, trainer_state: dict, parts: dict | None = None,
                    store=None) -> Path:
    from negminer.fileio import atomic_dir

    final = Path(run_dir) / "checkpoint"
    with atomic_dir(final, keep_old=PREV, remove_old=False) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        opt_t, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_t, str(tmp / "optimizer.safetensors"))
        rng_t, rng_meta = rng_state()
        save_file(rng_t, str(tmp / "rng.safetensors"))
        part_t, part_meta = part_states(parts or {})
        save_file(part_t, str(tmp / "parts.safetensors"))
        if store is not None:
            store.save(tmp)
        state = dict(trainer_state, optimizer=opt_meta, rng=rng_meta, parts=part_meta)
        (tmp / "trainer.json").write_text(json.dumps(state), encoding="utf-8")
    return final


PREV = "checkpoint.prev"
FILES = ("trainer.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors")


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint folder (a kill between the two renames of a save leaves only checkpoint.prev)."""
    found = usable_checkpoints(run_dir)
    return found[0] if found else None


def usable_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, newest first (``checkpoint.old``: the name before ``checkpoint.prev``)."""
    return [p for p in (Path(run_dir) / n for n in ("checkpoint", PREV, "checkpoint.old")) if p.is_dir()]


def verify(path: Path) -> dict:
    """Read every file of a checkpoint without touching the model; raise CheckpointError naming the first
    broken one; return the trainer state."""
    from safetensors import safe_open

    from negminer.errors import CheckpointError

    path = Path(path)
    for name in FILES:
        if not (path / name).is_file():
            raise CheckpointError(path / name, "missing")
    try:
        state = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not all(k in state for k in ("step", "optimizer", "rng", "counters")):
            raise ValueError("not a negminer trainer state")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path / "trainer.json", f"unreadable ({e})") from None
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as h:
                h.keys()
        except Exception as e:  # safetensors' own error type
            raise CheckpointError(f, f"unreadable ({e})") from None
    for f in sorted(path.glob("*.npy")):
        try:
            np.load(f, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise CheckpointError(f, f"unreadable ({e})") from None
    return state


def load_checkpoint(path: Path, model, optimizer) -> tuple[dict, dict]:
    """Restore model and optimizer in place; return (trainer state, the parts' tensors); RNGs restored."""
    path = Path(path)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if unexpected or missing:
        raise RuntimeError(f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    state = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    optimizer.load_state_dict(_optimizer_state(load_file(str(path / "optimizer.safetensors")), state["optimizer"]))
    set_rng_state(load_file(str(path / "rng.safetensors")), state["rng"])
    extra = path / "parts.safetensors"
    return state, (load_file(str(extra)) if extra.is_file() else {})
