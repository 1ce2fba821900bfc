"""Static tower: a trainable bag of token embeddings (mean), initialised from a transformer's input
embeddings. Behaves exactly like sentence-transformers' ``StaticEmbedding``: the same fast tokenizer,
no special tokens, no padding, ``nn.EmbeddingBag(mode="mean")`` over (input_ids, offsets). Truncation
to ``max_length`` is stored in the saved tokenizer.json, so ``SentenceTransformer(path)`` gives the
same vectors. Hundreds of times cheaper than a transformer on CPU: for experiments and tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from negminer.encoders import stdir
from negminer.encoders.quiet import quiet_transformers


def _tokenizer(path: Path):
    """The directory's fast tokenizer (tokenizers.Tokenizer): tokenizer.json, else converted by transformers."""
    from tokenizers import Tokenizer

    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    from transformers import AutoTokenizer

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: the static tower needs a fast tokenizer (tokenizer.json)")
    return tok.backend_tokenizer


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
        """From a transformer (or sentence-transformers) directory: its input token embeddings."""
        from transformers import AutoModel

        path = stdir.module_dir(path, "Transformer") or Path(path)
        with quiet_transformers():
            weights = AutoModel.from_pretrained(str(path), local_files_only=True).get_input_embeddings().weight
        return cls(_tokenizer(path), weights)

    @classmethod
    def from_saved(cls, path: str | Path) -> "StaticTower":
        """From a saved StaticEmbedding (ours, or any sentence-transformers static model)."""
        path = stdir.module_dir(path, "StaticEmbedding") or Path(path)
        return cls(_tokenizer(path), load_file(str(path / "model.safetensors"))["embedding.weight"])

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    def tokenize(self, texts, max_length: int) -> dict[str, torch.Tensor]:
        return self.collate(self.token_ids(texts, max_length))

    def token_ids(self, texts, max_length: int) -> list[list[int]]:
        self.tokenizer.enable_truncation(max_length)
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def collate(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        offsets = torch.from_numpy(np.cumsum([0] + [len(x) for x in ids[:-1]], dtype=np.int64)[:len(ids)])
        return {"input_ids": torch.tensor([t for x in ids for t in x], dtype=torch.long), "offsets": offsets}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embedding(features["input_ids"], features["offsets"])

    def save(self, path: Path, max_length: int, normalize: bool, query_max_length: int | None = None) -> None:
        """A sentence-transformers directory: 0_StaticEmbedding, optional 1_Normalize (the layout ST
        itself writes; sentence-transformers 3.x cannot load a StaticEmbedding at the root).

        ``max_length`` (the truncation stored in tokenizer.json) is for ``encode`` / ``encode_document``.
        A StaticEmbedding has no per-task length, so a different ``query_max_length`` (one tower for
        both sides) makes a Router model: the query route is ``query_tokenizer`` (a StaticEmbedding
        with the query truncation and a one-wide table of zeros: it only tokenises; zero-wide tables break
        torch's multi-threaded embedding_bag) followed by the shared
        0_StaticEmbedding, which pools the query's tokens; the document route is 0_StaticEmbedding.
        The weights are stored once.
        """
        sub = path / "0_StaticEmbedding"
        sub.mkdir(parents=True, exist_ok=True)
        weight = self.embedding.weight.detach().cpu().contiguous()
        save_file({"embedding.weight": weight}, str(sub / "model.safetensors"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.save(str(sub / "tokenizer.json"))
        modules = [("0_StaticEmbedding", stdir.STATIC)]
        if query_max_length is None or query_max_length == max_length:
            stdir.write_modules(path, modules, normalize)
            return
        tok = path / "query_tokenizer"
        tok.mkdir(parents=True, exist_ok=True)
        save_file({"embedding.weight": weight.new_zeros(weight.shape[0], 1)}, str(tok / "model.safetensors"))
        self.tokenizer.enable_truncation(query_max_length)
        self.tokenizer.save(str(tok / "tokenizer.json"))
        if normalize:
            modules.append(("1_Normalize", stdir.NORMALIZE))
            (path / "1_Normalize").mkdir(exist_ok=True)
        stdir.write_router(path, {stdir.QUERY: [("query_tokenizer", stdir.STATIC), *modules],
                                  stdir.DOCUMENT: modules}, normalize)
