"""Hugging Face transformer tower: AutoModel + mean (or CLS) pooling over the attention mask."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from negminer.encoders.quiet import quiet_transformers


class HFTower(nn.Module):
    kind = "hf"

    def __init__(self, path: str | Path, pooling: str = "mean"):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

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

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**features).last_hidden_state
        if self.pooling == "cls":
            return out[:, 0]
        mask = features["attention_mask"].unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def save(self, path: Path, max_length: int, normalize: bool) -> None:
        """A sentence-transformers directory: Transformer at the root, Pooling, optional Normalize."""
        path.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length, "do_lower_case": False}))
        (path / "1_Pooling").mkdir(exist_ok=True)
        (path / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": self.dim, "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            (path / "2_Normalize").mkdir(exist_ok=True)
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "modules.json").write_text(json.dumps(modules, indent=2))
        (path / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine" if normalize else "dot"}))
