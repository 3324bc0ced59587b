"""BERTScore precision, recall and F1 (Zhang et al., 2020) with an encoder the user has locally: greedy cosine
matching of contextual token embeddings, no idf weighting, no baseline rescaling. Several references: the one
with the best F1, and its precision and recall."""

from __future__ import annotations


class BertScorer:
    def __init__(self, model_path: str, layer: int | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path).eval()
        self.layer, self.batch_size, self.torch = layer, batch_size, torch
        self.name = f"bertscore P/R/F1 ({model_path}, layer {'last' if layer is None else layer}, no idf, no rescale)"

    def embed(self, texts: list[str]) -> list:
        """Per text: its unit-normalised token vectors (special tokens dropped)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, return_special_tokens_mask=True)
            special = batch.pop("special_tokens_mask").bool()
            if batch["input_ids"].shape[1] == 0:  # every text empty (a model that generated nothing): no token
                out += [self.torch.zeros(0, 1)] * len(special)
                continue
            with self.torch.inference_mode():
                states = self.model(**batch, output_hidden_states=True).hidden_states
            hidden = states[-1 if self.layer is None else self.layer]
            keep = batch["attention_mask"].bool() & ~special
            out += [self.torch.nn.functional.normalize(h[k], dim=-1) for h, k in zip(hidden, keep)]
        return out

    def prf(self, candidate, reference) -> dict[str, float]:
        """Precision: each candidate token's best match in the reference, averaged; recall the other way."""
        if len(candidate) == 0 or len(reference) == 0:
            return {"bertscore_precision": 0.0, "bertscore_recall": 0.0, "bertscore": 0.0}
        similarity = candidate @ reference.T
        precision = float(similarity.max(dim=1).values.mean())
        recall = float(similarity.max(dim=0).values.mean())
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return {"bertscore_precision": precision, "bertscore_recall": recall, "bertscore": f1}

    def score(self, predictions: list[str], references: list[tuple[str, ...]]) -> list[dict[str, float]]:
        """Per prediction: precision, recall and F1 (`bertscore`) against its best-matching reference (by F1)."""
        flat = [r for refs in references for r in refs]
        candidates, refs_embedded = self.embed(predictions), iter(self.embed(flat))
        return [max((self.prf(c, next(refs_embedded)) for _ in refs), key=lambda s: s["bertscore"])
                for c, refs in zip(candidates, references)]
