"""DualEncoder: query tower f and target tower g (one shared module or two), score = <f(q), g(t)> / tau.

Saved layout (``save`` / ``load``): ``path`` is ONE sentence-transformers model, the model that was
trained: ``SentenceTransformer(path).encode_query(texts)`` gives ``encode_queries(texts)`` and
``.encode_document(texts)`` gives ``encode_targets(texts)`` (each side truncated at its own max length),
and plain ``.encode`` gives the target (document) embeddings. Next to it, ``negminer.json`` holds our
settings (kind, spec, pooling, normalize, temperature and its raw log, max lengths, shared).

- shared tower, HF: Transformer at the root + ``1_Pooling`` (+ ``2_Normalize``); when the max lengths
  differ, the Transformer's ``query_length`` / ``document_length`` (sentence-transformers' per-task
  lengths) truncate each side: no Router, one copy of the weights;
- shared tower, static: ``0_StaticEmbedding`` (+ ``1_Normalize``); when the max lengths differ, a
  Router whose query route is a tokenizer-only StaticEmbedding (``query_tokenizer``: the query
  truncation, a zero-width table) then the shared ``0_StaticEmbedding``: one copy of the weights;
- separate towers: ``path/query/`` and ``path/target/`` are each a whole sentence-transformers model
  (``SentenceTransformer(path / "query")`` still loads one tower) and ``path`` is a Router model
  (``router_config.json``) whose "query" route is the modules of ``query/`` and whose "document"
  route (the default) those of ``target/``: the weights are stored once.

Weights are safetensors. Tested with sentence-transformers 6.3; a Router model needs 5.x or later,
per-task lengths a version that knows ``query_length`` (a shared tower with equal lengths is a plain
model, as sentence-transformers 3.x writes it).

Checkpoints: a shared tower is registered once (as ``query_tower``; ``target_tower`` is a property
returning the same object), so ``state_dict()`` holds no aliased tensors and
``safetensors.torch.save_file(model.state_dict())`` works. ``checkpoint_state()`` also returns CPU,
contiguous, alias-free copies for towers with tied weights; ``load_checkpoint_state`` restores it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from negminer.encoders import stdir
from negminer.errors import ConfigError
from negminer.fileio import atomic_dir, atomic_write_json

MIN_SCALE, MAX_SCALE = 1.0 / 100.0, 100.0  # a learned 1 / tau is clamped to this range (CLIP: max 100)


class DualEncoder(nn.Module):
    def __init__(self, query_tower: nn.Module, target_tower: nn.Module | None = None, *, normalize: bool = True,
                 temperature: float = 0.05, learn_temperature: bool = False, query_max_length: int = 64,
                 target_max_length: int = 128, spec: str = ""):
        super().__init__()
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise ConfigError(f"temperature must be a positive number, not {temperature!r}")
        if learn_temperature and not MIN_SCALE * (1 - 1e-6) <= 1.0 / temperature <= MAX_SCALE * (1 + 1e-6):
            raise ConfigError(f"a learned temperature must start in [{1 / MAX_SCALE}, {1 / MIN_SCALE}], not {temperature}")
        for name, n in (("query_max_length", query_max_length), ("target_max_length", target_max_length)):
            if not (isinstance(n, int) and n > 0):
                raise ConfigError(f"{name} must be a positive integer, not {n!r}")
        self.shared = target_tower is None or target_tower is query_tower
        self.query_tower = query_tower
        if not self.shared:
            self._modules["target_tower"] = target_tower  # add_module would trip over the property
        self.normalize, self.learn_temperature, self.spec = normalize, learn_temperature, spec
        self.query_max_length, self.target_max_length = query_max_length, target_max_length
        log_scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def target_tower(self) -> nn.Module:
        return self.query_tower if self.shared else self._modules["target_tower"]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        return self.target_tower.dim

    def logit_scale(self) -> torch.Tensor:
        """1 / tau as a scalar tensor (with grad when learned; clamped to [MIN_SCALE, MAX_SCALE] then)."""
        if self.learn_temperature:
            return self.log_scale.clamp(math.log(MIN_SCALE), math.log(MAX_SCALE)).exp()
        return self.log_scale.exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale().detach())

    # ---- with gradient ---------------------------------------------------------------------
    def tokenize_queries(self, texts) -> dict[str, torch.Tensor]:
        return self.query_tower.tokenize(texts, self.query_max_length)

    def tokenize_targets(self, texts) -> dict[str, torch.Tensor]:
        return self.target_tower.tokenize(texts, self.target_max_length)

    def _embed(self, tower, features) -> torch.Tensor:
        dev = self.device
        x = tower({k: v.to(dev) for k, v in features.items()})
        return F.normalize(x, dim=-1) if self.normalize else x

    def embed_queries(self, features) -> torch.Tensor:
        return self._embed(self.query_tower, features)

    def embed_targets(self, features) -> torch.Tensor:
        return self._embed(self.target_tower, features)

    # ---- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, items, featurize, embed, batch_size, progress, desc) -> torch.Tensor:
        """``items``: texts, or token-id rows with ``featurize=collate``."""
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        n = len(items)
        order = sorted(range(n), key=lambda i: -len(items[i]))  # similar lengths share a batch (less padding)
        out = torch.empty(n, self.dim)
        try:
            for s in tqdm(range(0, n, batch_size), disable=not progress, desc=desc, unit="batch", leave=False):
                idx = order[s:s + batch_size]
                out[idx] = embed(featurize([items[i] for i in idx])).float().cpu()  # unsort: rows by index
        finally:
            self.train(was_training)
        return out

    @torch.no_grad()
    def encode_queries(self, texts, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """float32 [n, d] on CPU, in input order; eval mode inside, training mode restored."""
        return self._encode(texts, self.tokenize_queries, self.embed_queries, batch_size, progress, "encode queries")

    @torch.no_grad()
    def encode_targets(self, texts, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        return self._encode(texts, self.tokenize_targets, self.embed_targets, batch_size, progress, "encode targets")

    # pre-tokenised targets (the target store keeps these so that a refresh does not tokenise again)
    def target_token_ids(self, texts) -> list[list[int]]:
        return self.target_tower.token_ids(texts, self.target_max_length)

    def collate_targets(self, ids) -> dict[str, torch.Tensor]:
        return self.target_tower.collate(ids)

    @torch.no_grad()
    def encode_target_ids(self, ids, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        """``encode_targets`` from ``target_token_ids`` rows."""
        return self._encode(ids, self.collate_targets, self.embed_targets, batch_size, progress, "encode targets")

    # ---- checkpoints -----------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """state_dict as CPU, contiguous tensors sharing no memory (safe for safetensors.save_file)."""
        out, seen = {}, set()
        for k, v in self.state_dict().items():
            v = v.detach().cpu().contiguous()
            key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
            out[k] = v.clone() if key in seen else v
            seen.add(key)
        return out

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], strict: bool = True):
        if self.shared:  # a shared tower's weights are stored once, under query_tower.
            state = {k: v for k, v in state.items() if not k.startswith("target_tower.")}
        return self.load_state_dict(state, strict=strict)

    # ---- persistence -----------------------------------------------------------------------
    def settings(self) -> dict:
        return {"format": 1, "kind": self.target_tower.kind, "spec": self.spec, "shared": self.shared,
                "pooling": self.target_tower.pooling, "normalize": self.normalize,
                "temperature": self.temperature, "learn_temperature": self.learn_temperature,
                "log_scale": float(self.log_scale.detach()), "query_max_length": self.query_max_length,
                "target_max_length": self.target_max_length}

    def save(self, path) -> None:
        """Build in a temporary sibling folder, then rename it into place (replacing an older save)."""
        with atomic_dir(path) as tmp:
            if self.shared:
                self.target_tower.save(tmp, self.target_max_length, self.normalize,
                                       query_max_length=self.query_max_length)
            else:
                self.query_tower.save(tmp / "query", self.query_max_length, self.normalize)
                self.target_tower.save(tmp / "target", self.target_max_length, self.normalize)
                stdir.write_router(tmp, {stdir.QUERY: stdir.read_modules(tmp / "query", "query"),
                                         stdir.DOCUMENT: stdir.read_modules(tmp / "target", "target")},
                                   self.normalize)
            atomic_write_json(tmp / "negminer.json", self.settings())

    @classmethod
    def load(cls, path, device: str = "cpu") -> "DualEncoder":
        """Restore a model written by ``save`` (towers, settings, learned temperature)."""
        from negminer.encoders.hf import HFTower
        from negminer.encoders.static import StaticTower

        path = Path(path)
        try:
            meta = json.loads((path / "negminer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a saved negminer model (negminer.json: {e})") from None
        if meta.get("kind") == "static":
            tower = StaticTower.from_saved
        else:
            def tower(p):
                return HFTower(p, pooling=meta.get("pooling", "mean"))
        try:
            q = tower(path if meta["shared"] else path / "query")
            t = None if meta["shared"] else tower(path / "target")
            model = cls(q, t, normalize=meta["normalize"], temperature=meta["temperature"],
                        learn_temperature=meta["learn_temperature"], query_max_length=meta["query_max_length"],
                        target_max_length=meta["target_max_length"], spec=meta.get("spec", ""))
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged or foreign directory
            raise ConfigError(f"{path}: cannot load the saved negminer model: {type(e).__name__}: {e}") from None
        if "log_scale" in meta:  # exact, even beyond the clamp
            with torch.no_grad():
                model.log_scale.fill_(meta["log_scale"])
        return model.to(device)
