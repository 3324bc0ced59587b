"""BERTScore F1 (Zhang et al., 2020) with an encoder the user has locally: greedy cosine matching of
contextual token embeddings, no idf weighting, no baseline rescaling. Several references: the best."""

from __future__ import annotations


class BertScorer:
    def __init__(self, model_path: str, layer: int | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path).eval()
        self.layer, self.batch_size, self.torch = layer, batch_size, torch
        self.name = f"bertscore F1 ({model_path}, layer {'last' if layer is None else layer}, no idf, no rescale)"

    def embed(self, texts: list[str]) -> list:
        """Per text: its unit-normalised token vectors (special tokens dropped)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, return_special_tokens_mask=True)
            special = batch.pop("special_tokens_mask").bool()
            with self.torch.inference_mode():
                states = self.model(**batch, output_hidden_states=True).hidden_states
            hidden = states[-1 if self.layer is None else self.layer]
            keep = batch["attention_mask"].bool() & ~special
            out += [self.torch.nn.functional.normalize(h[k], dim=-1) for h, k in zip(hidden, keep)]
        return out

    def f1(self, candidate, reference) -> float:
        if len(candidate) == 0 or len(reference) == 0:
            return 0.0
        similarity = candidate @ reference.T
        precision = similarity.max(dim=1).values.mean()
        recall = similarity.max(dim=0).values.mean()
        return float(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0

    def score(self, predictions: list[str], references: list[tuple[str, ...]]) -> list[float]:
        """BERTScore F1 of each prediction against its best-matching reference."""
        flat = [r for refs in references for r in refs]
        candidates, refs_embedded = self.embed(predictions), iter(self.embed(flat))
        return [max(self.f1(c, next(refs_embedded)) for _ in refs) for c, refs in zip(candidates, references)]
