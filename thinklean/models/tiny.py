"""The embedded tokenizer and tiny Qwen2 model, and loaders that accept any local HF causal LM
(a safetensors directory or a GGUF file).

The tokenizer is a byte-level BPE trained on the arithmetic corpus with every digit its own
token and the format tags as special tokens. The model is a ``Qwen2ForCausalLM`` (hidden 256,
4 layers, 4 heads, FFN 1024, tied embeddings; about 4.4M parameters).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from thinklean.data.arith import tokenizer_corpus
from thinklean.data.formats import EOS, PAD, SPECIAL_TOKENS
from thinklean.models.card import CardInfo, write_model_card

hf_logging.disable_progress_bar()  # per-file load/save bars drown thinklean's own progress output

BASE_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "base"
# the earlier base models: base-v1 (task v1; docs/base-model.md keeps what it showed), base-v2
# (checks on every step, trained from base-v1) and base-v3 (the task's problems and check
# openers, trained from base-v2), which the current one is trained from; `--model base-vN` loads them
BASE_V1_MODEL_DIR = BASE_MODEL_DIR.with_name("base-v1")
BASE_V2_MODEL_DIR = BASE_MODEL_DIR.with_name("base-v2")
BASE_V3_MODEL_DIR = BASE_MODEL_DIR.with_name("base-v3")
EARLIER_BASE_MODELS = {"base-v1": BASE_V1_MODEL_DIR, "base-v2": BASE_V2_MODEL_DIR, "base-v3": BASE_V3_MODEL_DIR}
TINY_CONFIG = dict(
    hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=1024
)


def build_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the embedded byte-level BPE (digits split, tags special) on the task corpus."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus if corpus is not None else tokenizer_corpus(seed=seed), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD, EOS)],
        model_max_length=1024,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **overrides: int) -> Qwen2ForCausalLM:
    """A freshly initialised tiny ``Qwen2ForCausalLM`` sized for ``tokenizer`` (float32)."""
    torch.manual_seed(seed)
    vocab = -(-len(tokenizer) // 64) * 64  # round up: friendlier matmul shapes
    config = Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **{**TINY_CONFIG, **overrides},
    )
    return Qwen2ForCausalLM(config)


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` names a GGUF file (llama.cpp's single-file format) rather than a directory."""
    return Path(path).suffix.lower() == ".gguf"


def _gguf_arguments(path: Path) -> tuple[str, dict[str, str]]:
    """``(directory, {"gguf_file": name})`` for transformers' GGUF loader; checks ``gguf`` is installed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError as e:
        raise ImportError(f"{path}: reading GGUF files needs the gguf package: pip install 'thinklean[gguf]'") from e
    return str(path.parent), {"gguf_file": path.name}


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory (or the one inside a GGUF file) as ``PreTrainedTokenizerFast``;
    the pad token falls back to EOS."""
    path = Path(path)
    if is_gguf(path):
        directory, gguf = _gguf_arguments(path)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, **gguf)
    elif not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (expected a Hugging Face model directory)")
    else:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_gguf_model(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    """A plain (trainable, ``save_pretrained``-able) model from a GGUF file.

    transformers de-quantizes GGUF weights on load but keeps the model marked as GGUF-quantized,
    which refuses ``save_pretrained``; the weights are moved into a fresh model of the same config.
    """
    directory, gguf = _gguf_arguments(path)
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **gguf)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return model


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> PreTrainedModel:
    """Load a local HF causal-LM directory (safetensors weights only) or a GGUF file.

    GGUF (llama/qwen2/... architectures that transformers maps) holds tensors and metadata, no
    code or pickles, like safetensors; quantized weights are de-quantized to ``dtype``.
    """
    path = Path(path)
    if is_gguf(path):
        return _load_gguf_model(path, dtype)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path}: no *.safetensors weights (thinklean loads safetensors only)")
    for file in sorted(path.glob("*.safetensors")):
        check_safetensors(file)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model


def check_safetensors(file: str | Path) -> None:
    """``ValueError`` naming ``file`` when its header is unreadable or its tensors run past its end
    (e.g. a truncated download or an interrupted copy)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt"):
            pass
    except SafetensorError as e:
        raise ValueError(f"{file}: not a complete safetensors file ({e}); expected the weights as "
                         "save_pretrained writes them (copy or download the file again)") from None


def resolve_model_path(path: str | Path | None) -> Path:
    """``None`` or ``"base"`` means the shipped embedded base model, ``"base-v1"`` to ``"base-v3"``
    the earlier ones."""
    if str(path) in EARLIER_BASE_MODELS:
        return EARLIER_BASE_MODELS[str(path)]
    if path is None or str(path) == "base":
        if not (BASE_MODEL_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"the shipped base model is missing from {BASE_MODEL_DIR}; run `thinklean demo --rebuild`"
            )
        return BASE_MODEL_DIR
    return Path(path)


def load_pretrained(
    path: str | Path | None = None, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Model and tokenizer from a local directory (default: the shipped base model)."""
    resolved = resolve_model_path(path)
    return load_model(resolved, dtype, trust_remote_code), load_tokenizer(resolved)


def save_pretrained(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: str | Path, dtype: torch.dtype | None = None,
    card: CardInfo | None = None, state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save model (safetensors) + tokenizer as a plain HF directory, optionally cast to ``dtype``;
    with ``card``, a model card (``README.md``) too. ``state_dict``: the weights to write instead
    of ``model.state_dict()`` (a sharded model's consolidated weights)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = state_dict
    if dtype is not None:
        state = {k: v.detach().to(dtype) for k, v in (model.state_dict() if state is None else state).items()}
    model.save_pretrained(str(path), state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    if card is not None:
        write_model_card(path, card)
