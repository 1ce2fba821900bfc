"""Hugging Face transformer tower: AutoModel + mean (or CLS) pooling over the attention mask.

Mean pooling is sentence-transformers' ``Pooling(mode="mean")``: sum(h * mask) / max(sum(mask), 1e-9).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from negminer.encoders import stdir
from negminer.encoders.quiet import quiet_transformers
from negminer.fileio import atomic_write_json


class HFTower(nn.Module):
    kind = "hf"

    def __init__(self, path: str | Path, pooling: str = "mean"):
        """``path``: a transformer directory, or a sentence-transformers one (its Transformer module is used)."""
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = stdir.module_dir(path, "Transformer") or Path(path)
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.pooling = pooling

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, texts, max_length: int) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                                   return_tensors="pt"))

    def token_ids(self, texts, max_length: int) -> list[list[int]]:
        """Unpadded ids (special tokens included), to be kept and batched later with ``collate``."""
        return self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]

    def collate(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """Pad a batch of ``token_ids`` rows: the features ``tokenize`` gives for the same texts."""
        width = max(map(len, ids))
        x = torch.full((len(ids), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, row in enumerate(ids):
            sl = slice(width - len(row), width) if left else slice(0, len(row))
            x[i, sl] = torch.as_tensor(row, dtype=torch.long)
            mask[i, sl] = 1
        return {"input_ids": x, "attention_mask": mask}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**features).last_hidden_state
        if self.pooling == "cls":
            return out[:, 0]
        mask = features["attention_mask"].unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def save(self, path: Path, max_length: int, normalize: bool, query_max_length: int | None = None) -> None:
        """A sentence-transformers directory: Transformer at the root, 1_Pooling, optional 2_Normalize.

        ``max_length`` truncates ``encode`` and ``encode_document``. With a different ``query_max_length``
        (one tower for both sides), the Transformer also gets sentence-transformers' per-task lengths
        (``query_length`` for ``encode_query``, ``document_length``): one copy of the weights, no Router.
        """
        path.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.model.save_pretrained(str(path))  # safetensors (the default)
            self.tokenizer.save_pretrained(str(path))
        config = {"max_seq_length": max_length, "do_lower_case": False}
        if query_max_length is not None and query_max_length != max_length:
            config.update(query_length=query_max_length, document_length=max_length)
        atomic_write_json(path / "sentence_bert_config.json", config)
        stdir.write_modules(path, [("", stdir.TRANSFORMER), ("1_Pooling", stdir.POOLING)], normalize)
        atomic_write_json(path / "1_Pooling" / "config.json", {
            "word_embedding_dimension": self.dim, "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False})
