"""DualEncoder: query tower f and target tower g (one shared module or two), score = <f(q), g(t)> / tau.

Saved layout: a shared model's directory is a sentence-transformers model (``SentenceTransformer(path)``
gives the same embeddings as ``encode_targets``) plus ``negminer.json``; separate towers are saved as
``path/query/`` and ``path/target/``, each a sentence-transformers model, plus ``path/negminer.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MAX_SCALE = 100.0  # 1 / tau is clamped to this when learned (as CLIP)


class DualEncoder(nn.Module):
    def __init__(self, query_tower: nn.Module, target_tower: nn.Module | None = None, *, normalize: bool = True,
                 temperature: float = 0.05, learn_temperature: bool = False, query_max_length: int = 32,
                 target_max_length: int = 128, spec: str = ""):
        super().__init__()
        self.shared = target_tower is None
        self.query_tower = query_tower
        self.target_tower = query_tower if self.shared else target_tower
        self.normalize, self.learn_temperature, self.spec = normalize, learn_temperature, spec
        self.query_max_length, self.target_max_length = query_max_length, target_max_length
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        return self.target_tower.dim

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(MAX_SCALE)).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale().detach())

    def tokenize_queries(self, texts):
        return self.query_tower.tokenize(texts, self.query_max_length)

    def tokenize_targets(self, texts):
        return self.target_tower.tokenize(texts, self.target_max_length)

    def _embed(self, tower, features):
        dev = self.device
        x = tower({k: v.to(dev) for k, v in features.items()})
        return F.normalize(x, dim=-1) if self.normalize else x

    def embed_queries(self, features) -> torch.Tensor:
        return self._embed(self.query_tower, features)

    def embed_targets(self, features) -> torch.Tensor:
        return self._embed(self.target_tower, features)

    @torch.no_grad()
    def _encode(self, texts, tokenize, embed, batch_size, progress, desc):
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        n = len(texts)
        order = sorted(range(n), key=lambda i: -len(texts[i]))  # similar lengths share a batch
        out = torch.empty(n, self.dim)
        try:
            for s in tqdm(range(0, n, batch_size), disable=not progress, desc=desc, unit="batch", leave=False):
                idx = order[s:s + batch_size]
                out[idx] = embed(tokenize([texts[i] for i in idx])).float().cpu()
        finally:
            self.train(was_training)
        return out

    def encode_queries(self, texts, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        return self._encode(texts, self.tokenize_queries, self.embed_queries, batch_size, progress, "encode queries")

    def encode_targets(self, texts, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        return self._encode(texts, self.tokenize_targets, self.embed_targets, batch_size, progress, "encode targets")

    # ---- persistence ----------------------------------------------------------------------
    def settings(self) -> dict:
        return {"format": 1, "kind": self.target_tower.kind, "shared": self.shared, "normalize": self.normalize,
                "pooling": self.target_tower.pooling, "temperature": self.temperature,
                "learn_temperature": self.learn_temperature, "query_max_length": self.query_max_length,
                "target_max_length": self.target_max_length, "spec": self.spec}

    def save(self, path) -> None:
        """Write atomically: a temporary sibling folder renamed into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        try:
            if self.shared:
                self.target_tower.save(tmp, self.target_max_length, self.normalize)
            else:
                self.query_tower.save(tmp / "query", self.query_max_length, self.normalize)
                self.target_tower.save(tmp / "target", self.target_max_length, self.normalize)
            (tmp / "negminer.json").write_text(json.dumps(self.settings(), indent=2))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path, device: str = "cpu") -> "DualEncoder":
        from negminer.errors import ConfigError

        path = Path(path)
        meta_path = path / "negminer.json"
        if not meta_path.is_file():
            raise ConfigError(f"{path}: not a saved negminer model (no negminer.json)")
        meta = json.loads(meta_path.read_text())
        tower = _load_tower(meta["kind"], meta.get("pooling", "mean"))
        q = tower(path if meta["shared"] else path / "query")
        t = None if meta["shared"] else tower(path / "target")
        model = cls(q, t, normalize=meta["normalize"], temperature=meta["temperature"],
                    learn_temperature=meta["learn_temperature"], query_max_length=meta["query_max_length"],
                    target_max_length=meta["target_max_length"], spec=meta.get("spec", ""))
        return model.to(device)


def _load_tower(kind: str, pooling: str):
    from negminer.encoders.hf import HFTower
    from negminer.encoders.static import StaticTower

    if kind == "static":
        return StaticTower.from_saved
    return lambda p: HFTower(p, pooling=pooling)
