"""A tiny random BERT classifier and the planted-trigger task, for tests and the README.

Nothing is downloaded: the model comes from a config (vocab 99, hidden 32, 2 layers, 4
heads, intermediate 37) and the tokenizer from a 99-word vocabulary file, both written with
`save_pretrained`, so `smoothgrad.models.load("hf:DIR")` reads them back offline.

The planted task: sentences of 4-10 random filler words (w10..w93) with one trigger word,
w0 (label 0, "negative") or w1 (label 1, "positive"), at a random place. A model that
solves it must look at the trigger; an explanation should point at it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import Tensor, nn

WORDS = [f"w{i}" for i in range(94)]
"""The vocabulary after the 5 special tokens: w0..w93, 99 ids in all."""
LABELS = {0: "negative", 1: "positive"}


def tiny_bert(directory: Path, seed: int = 0) -> Path:
    """A random tiny BERT classifier + tokenizer written with save_pretrained to `directory`."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, num_labels=2, id2label=LABELS,
        label2id={name: i for i, name in LABELS.items()}, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(config).eval()
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizer(str(vocab))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def sentences(n: int, generator: torch.Generator) -> tuple[list[str], Tensor, list[int]]:
    """n planted-trigger sentences, their labels, and each trigger's token position
    ([CLS] is position 0)."""
    texts, labels, where = [], [], []
    for _ in range(n):
        length = int(torch.randint(4, 11, (1,), generator=generator))
        words = [f"w{int(i)}" for i in torch.randint(10, 94, (length,), generator=generator)]
        label = int(torch.randint(0, 2, (1,), generator=generator))
        position = int(torch.randint(0, length, (1,), generator=generator))
        words[position] = f"w{label}"
        texts.append(" ".join(words))
        labels.append(label)
        where.append(position + 1)
    return texts, torch.tensor(labels), where


def train_planted(model: nn.Module, steps: int = 200, seed: int = 0) -> nn.Module:
    """Train a loaded tiny BERT (`smoothgrad.hf.TextModel`) on the planted task (seconds)."""
    generator = torch.Generator().manual_seed(seed)
    texts, labels, _ = sentences(2000, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(texts), (32,), generator=generator)
        batch = model.encode([texts[i] for i in pick])  # type: ignore[operator]
        loss = nn.functional.cross_entropy(model(batch.input_ids, **batch.extra), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def hit_rate(shown: list, where: list[int]) -> float:  # type: ignore[type-arg]
    """Share of texts whose highest |score| among the words ([CLS]/[SEP] left out) is the
    trigger's."""
    hits = 0
    for text, position in zip(shown, where, strict=True):
        scores = torch.tensor(text.values[1:-1])
        hits += int(scores.abs().argmax()) + 1 == position
    return hits / len(where)
