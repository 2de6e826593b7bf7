"""Tiny causal language models, a word-level tokenizer and the planted copy task.

Nothing is downloaded: each model is built from a config (hidden size 32, 2 layers) with
random weights, and the tokenizer is a word-level `tokenizers` model over
<pad> <bos> <eos> <unk>, the marker M and the words w0..w19.

The copy task: a prompt of 6-14 filler words (w10..w19) holds one marker M at a random place
(not among the last two), followed by the source, one of w0..w9. A decoder trained on it
(`train_copy`, seconds on a CPU) writes the source word at every position after it, so the
first token it generates after the prompt is a copy of the source: the copy owes its content
to the source alone, and an explanation of it should point there. In the `shared` variant
the source is drawn from the fillers' words too, so only the marker tells which word to
copy, and the marker itself matters to the prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import Tensor, nn

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
MARKER = "M"
WORDS = [f"w{i}" for i in range(20)]
VOCAB = [*SPECIAL, MARKER, *WORDS]

_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 37, "max_position_embeddings": 64}


def tokenizer(bos: bool = True, padding_side: str = "left") -> Any:
    """The word-level tokenizer (a `PreTrainedTokenizerFast`); with `bos`, it puts <bos>
    before each text, as Llama's does."""
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        words.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>", padding_side=padding_side)


def causal_lm(kind: str = "gpt2", seed: int = 0, **overrides: Any) -> nn.Module:
    """A random tiny causal LM of `kind` (gpt2, llama, mistral, qwen2; gemma2, which caps
    its logits after the head), in eval mode."""
    torch.manual_seed(seed)
    ids = {"vocab_size": len(VOCAB), "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if kind == "gpt2":
        shape = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 37, "n_positions": 64}
        config: Any = transformers.GPT2Config(
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids, **(shape | overrides))
        return transformers.GPT2LMHeadModel(config).eval()
    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
               "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM)}
    config_class, model_class = classes[kind]
    extra = {"head_dim": 8, "final_logit_softcapping": 0.5} if kind == "gemma2" else {}
    config = config_class(num_key_value_heads=2, **ids, **(_SHAPE | extra | overrides))
    return model_class(config).eval()


def save(model: nn.Module, directory: Path, bos: bool = True) -> Path:
    """The model and the tokenizer (`bos` as in `tokenizer`) written with save_pretrained
    (read back offline)."""
    model.save_pretrained(directory)
    tokenizer(bos).save_pretrained(directory)
    return directory


def copy_prompts(n: int, generator: torch.Generator, shortest: int = 6, longest: int = 14,
                 *, shared: bool = False) -> tuple[list[str], list[int]]:
    """n copy-task prompts and each source's word index in its prompt (0-based).

    The fillers are w10..w19 and the source (the word after M) one of w0..w9, so the model
    can find the source by its kind as well as by the marker; with `shared`, every word is
    drawn from w0..w19 and only the marker says which one to copy.
    """
    prompts, sources = [], []
    fillers = WORDS if shared else WORDS[10:]
    for _ in range(n):
        length = int(torch.randint(shortest, longest + 1, (1,), generator=generator))
        words = [fillers[int(i)] for i in torch.randint(0, len(fillers), (length,),
                                                        generator=generator)]
        marker = int(torch.randint(0, length - 2, (1,), generator=generator))
        words[marker] = MARKER
        if not shared:
            words[marker + 1] = WORDS[int(torch.randint(0, 10, (1,), generator=generator))]
        prompts.append(" ".join(words))
        sources.append(marker + 1)
    return prompts, sources


def train_copy(model: nn.Module, steps: int = 150, noise: float = 0.15, seed: int = 0,
               *, shared: bool = False) -> nn.Module:
    """Train a tiny GPT-2 on the copy task (`shared` as in `copy_prompts`; 150 steps, about
    2 s on two CPU cores): after the source, every position predicts the source word.
    Prompts have no <bos> (GPT-2's tokenizer adds none).

    Each batch's input embeddings get Gaussian noise of σ = `noise` × their range, the
    noise SmoothGrad adds: trained without it, the model stops copying on about a third of
    the noisy copies (flip rate 0.37 at noise 0.15), and a map of a prediction that the
    noise destroys says little about the clean one.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    layer = model.get_input_embeddings()  # type: ignore[operator]
    model.train()
    for _ in range(steps):
        prompts, sources = copy_prompts(64, generator, 14, 14, shared=shared)
        ids = torch.tensor([[VOCAB.index(w) for w in p.split()] for p in prompts])
        labels = torch.full_like(ids, -100)
        for i, source in enumerate(sources):
            labels[i, source:] = ids[i, source]
        embedded = layer(ids)
        spread = (embedded.amax(dim=(1, 2)) - embedded.amin(dim=(1, 2))).detach()
        embedded = embedded + noise * spread[:, None, None] * torch.randn(
            embedded.shape, generator=generator)
        logits = model(inputs_embeds=embedded).logits
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def embeddings_of(model: nn.Module, ids: Tensor) -> Tensor:
    """The model's input embeddings of `ids` (no gradient)."""
    with torch.no_grad():
        return model.get_input_embeddings()(ids).detach()  # type: ignore[operator,no-any-return]
