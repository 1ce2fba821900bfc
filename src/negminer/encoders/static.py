"""Static tower: a trainable bag of token embeddings (mean), initialised from a transformer's
input embeddings. Tokenises like sentence-transformers' StaticEmbedding (fast tokenizer, no special
tokens), so a saved static tower loads in ``SentenceTransformer`` and gives the same vectors.
Hundreds of times cheaper than a transformer on CPU: for experiments and tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn


class StaticTower(nn.Module):
    kind = "static"
    pooling = "mean"

    def __init__(self, tokenizer, weights: torch.Tensor):
        super().__init__()
        self.tokenizer = tokenizer  # tokenizers.Tokenizer
        self.tokenizer.no_padding()
        self.embedding = nn.EmbeddingBag.from_pretrained(weights.detach().clone().float(), freeze=False, mode="mean")

    @classmethod
    def from_transformer(cls, path: str | Path) -> "StaticTower":
        from tokenizers import Tokenizer
        from transformers import AutoModel

        from negminer.encoders.quiet import quiet_transformers

        with quiet_transformers():
            weights = AutoModel.from_pretrained(str(path), local_files_only=True).get_input_embeddings().weight
        return cls(Tokenizer.from_file(str(Path(path) / "tokenizer.json")), weights)

    @classmethod
    def from_saved(cls, path: str | Path) -> "StaticTower":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(Path(path) / "tokenizer.json")),
                   load_file(str(Path(path) / "model.safetensors"))["embedding.weight"])

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    def tokenize(self, texts, max_length: int) -> dict[str, torch.Tensor]:
        self.tokenizer.enable_truncation(max_length)
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        offsets = torch.from_numpy(np.cumsum([0] + [len(x) for x in ids[:-1]]))
        return {"input_ids": torch.tensor([t for x in ids for t in x], dtype=torch.long), "offsets": offsets}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding(features["input_ids"], features["offsets"])

    def save(self, path: Path, max_length: int, normalize: bool) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_file({"embedding.weight": self.embedding.weight.detach().cpu().contiguous()}, str(path / "model.safetensors"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.save(str(path / "tokenizer.json"))
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.StaticEmbedding"}]
        if normalize:
            (path / "1_Normalize").mkdir(exist_ok=True)
            modules.append({"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "modules.json").write_text(json.dumps(modules, indent=2))
        (path / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine" if normalize else "dot"}))
