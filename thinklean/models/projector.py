"""LiteReason's Reasoning Projector: the LM's last hidden state -> the next input embedding.

``K`` gated-MLP blocks shaped like the base model's MLP (``down(act(gate(x)) * up(x))``), applied
one after the other with no residual and no norm between them (as in the LiteReason authors'
code, arXiv 2512.02240). Every block starts as a copy of the last decoder layer's MLP.

``output_norm`` (see docs/litereason.md): ``"embedding"`` (default) rescales every output vector
to a fixed L2 norm, the median token-embedding norm of the model it was built from: three
chained copies of an MLP raise the hidden state's scale to a high power, so the authors' version
(``"none"``) feeds the LM inputs from about 0.03 to 3e6 times a token embedding's norm, and its
later latent steps reach a fixed point that is the same for every problem.

The projector is saved on its own (``projector.safetensors`` + ``projector.json``) so the LM
directory stays a plain Hugging Face model.

:class:`SoftLatent` is the other latent source (docs/litereason.md): no weights, the LM's own
next-token distribution times its input embedding matrix. :func:`load_source` reads either.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.activations import ACT2FN

WEIGHTS_NAME = "projector.safetensors"
CONFIG_NAME = "projector.json"
OUTPUT_NORMS = ("embedding", "none")


class GatedMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``: the Llama/Qwen MLP. ``[.., d] -> [.., d]``."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ReasoningProjector(nn.Module):
    """``num_blocks`` gated MLPs in sequence: post-final-norm hidden ``[.., d]`` -> embedding ``[.., d]``.

    ``max_steps`` is the largest number of latent steps one ``<implicit_thought>N</implicit_thought>``
    segment may ask for (larger N is clamped); it travels with the projector's config.
    ``output_norm="embedding"``: every output vector is scaled to L2 norm ``output_scale`` (a fixed
    buffer, saved with the weights; :meth:`from_model` sets it to the model's median token-embedding
    norm). ``"none"``: the blocks' output as it is (the paper's projector).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu",
                 num_blocks: int = 3, max_steps: int = 5, bias: bool = False,
                 output_norm: str = "embedding", output_scale: float = 1.0):
        super().__init__()
        if output_norm not in OUTPUT_NORMS:
            raise ValueError(f"ReasoningProjector: output_norm must be one of {', '.join(OUTPUT_NORMS)}, "
                             f"got {output_norm!r}")
        if not output_scale > 0:
            raise ValueError(f"ReasoningProjector: output_scale must be > 0, got {output_scale}")
        if num_blocks < 1:
            raise ValueError(f"ReasoningProjector: num_blocks must be >= 1, got {num_blocks}")
        if max_steps < 1:
            raise ValueError(f"ReasoningProjector: max_steps must be >= 1, got {max_steps}")
        if hidden_act not in ACT2FN:
            raise ValueError(
                f"ReasoningProjector: unknown hidden_act {hidden_act!r}; accepted: {', '.join(sorted(ACT2FN))}"
            )
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.num_blocks = num_blocks
        self.max_steps = max_steps
        self.bias = bias
        self.output_norm = output_norm
        self.blocks = nn.ModuleList(
            GatedMLP(hidden_size, intermediate_size, hidden_act, bias) for _ in range(num_blocks)
        )
        # Fixed, not learned: a learned scale lets projector SFT shrink latents to near-zero
        # "pause" slots that carry nothing (measured on the embedded model, docs/litereason.md).
        self.register_buffer("output_scale", torch.tensor(float(output_scale)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # No residual, no norm between blocks: the authors' structure.
        out = hidden
        for block in self.blocks:
            out = block(out)
        if self.output_norm == "none":
            return out
        # The blocks' output ranges from ~1e-18 (copies of a fresh MLP) to ~1e6 (the shipped model's):
        # dividing by the largest entry first keeps the squares of the L2 norm inside float32.
        out = out.float()
        out = out / out.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return (nn.functional.normalize(out, dim=-1) * self.output_scale).to(hidden.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].down_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.blocks[0].down_proj.weight.device

    @classmethod
    def from_model(cls, model: nn.Module, num_blocks: int = 3, max_steps: int = 5,
                   output_norm: str = "embedding") -> "ReasoningProjector":
        """A projector whose every block is a copy of ``model``'s last decoder-layer MLP, with
        ``output_scale`` = the median L2 norm of the rows of ``model``'s input embedding matrix.

        Same dtype and device as that MLP; the weights are copies (training the projector leaves
        the model untouched).
        """
        mlp = _last_mlp(model)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        hidden_act = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
        if hidden_act is None:
            raise ValueError(f"{type(model).__name__}.config names no hidden_act; cannot build a matching projector")
        projector = cls(
            hidden_size=mlp.gate_proj.in_features,
            intermediate_size=mlp.gate_proj.out_features,
            hidden_act=hidden_act,
            num_blocks=num_blocks,
            max_steps=max_steps,
            bias=mlp.gate_proj.bias is not None,
            output_norm=output_norm,
            output_scale=embedding_norm(model),
        ).to(device=mlp.gate_proj.weight.device, dtype=mlp.gate_proj.weight.dtype)
        source = {k: v.detach() for k, v in mlp.state_dict().items()}
        for block in projector.blocks:
            block.load_state_dict(source)  # copies into the block's own parameters
        return projector

    def config_dict(self) -> dict:
        return {
            "num_blocks": self.num_blocks,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "max_steps": self.max_steps,
            "dtype": str(self.dtype).removeprefix("torch."),
            "bias": self.bias,
            "output_norm": self.output_norm,
        }

    def save(self, path_dir: str | Path) -> Path:
        """Write ``projector.safetensors`` and ``projector.json`` into ``path_dir`` (created if needed)."""
        path = Path(path_dir)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        (path / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path_dir: str | Path, device: str | torch.device = "cpu") -> "ReasoningProjector":
        """The projector saved by :meth:`save`, in its saved dtype, bit-identical."""
        path = Path(path_dir)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path}: no {name} (expected a directory written by ReasoningProjector.save)")
        config = json.loads((path / CONFIG_NAME).read_text())
        missing = [k for k in ("num_blocks", "hidden_size", "intermediate_size", "hidden_act", "max_steps", "dtype")
                   if k not in config]
        if missing:
            raise ValueError(f"{path / CONFIG_NAME}: missing keys {missing}")
        dtype = getattr(torch, config["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{path / CONFIG_NAME}: unknown dtype {config['dtype']!r} (e.g. 'float32', 'bfloat16')")
        projector = cls(
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            hidden_act=config["hidden_act"],
            num_blocks=config["num_blocks"],
            max_steps=config["max_steps"],
            bias=config.get("bias", False),
            output_norm=config.get("output_norm", "none"),  # saved before the option existed: the paper's
        ).to(dtype=dtype)
        state = load_file(str(path / WEIGHTS_NAME))
        if "output_scale" not in state:
            if projector.output_norm != "none":
                raise ValueError(f"{path / WEIGHTS_NAME}: no output_scale for output_norm {projector.output_norm!r}")
            state["output_scale"] = projector.output_scale  # unused without the norm
        projector.load_state_dict(state, strict=True)
        return projector.to(device)


class SoftLatent(nn.Module):
    """Latent input = ``softmax(head(hidden)) @ E``, the LM's expected next-token embedding,
    rescaled to L2 norm ``output_scale`` (the median token-embedding norm): ``[.., d] -> [.., d]``.

    No weights of its own: the LM's output head and input embeddings (the LM is held outside the
    module tree, so ``parameters()`` is empty and freezing this source leaves the LM as it is).
    Training the LM trains the latents; where the value a latent step should carry is what the
    LM would write next, the latent starts out right. ``max_steps`` as in :class:`ReasoningProjector`.
    """

    kind = "soft"

    def __init__(self, model: nn.Module, max_steps: int = 5, output_scale: float | None = None):
        super().__init__()
        if max_steps < 1:
            raise ValueError(f"SoftLatent: max_steps must be >= 1, got {max_steps}")
        if model.get_output_embeddings() is None:
            raise ValueError(f"{type(model).__name__} has no output embeddings (LM head) to read a distribution from")
        self._lm = [model]
        self.hidden_size = model.get_input_embeddings().weight.shape[1]
        self.max_steps = max_steps
        scale = embedding_norm(model) if output_scale is None else float(output_scale)
        self.register_buffer("output_scale", torch.tensor(scale, device=self.device))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        lm = self._lm[0]
        probs = torch.softmax(lm.get_output_embeddings()(hidden).float(), dim=-1)
        soft = probs @ lm.get_input_embeddings().weight.float()
        return (nn.functional.normalize(soft, dim=-1) * self.output_scale).to(hidden.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self._lm[0].get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self._lm[0].get_input_embeddings().weight.device

    def config_dict(self) -> dict:
        return {"source": self.kind, "hidden_size": self.hidden_size, "max_steps": self.max_steps,
                "output_scale": float(self.output_scale)}

    def save(self, path_dir: str | Path) -> Path:
        """Write ``projector.json`` (no weights) into ``path_dir``; a stale ``projector.safetensors`` is removed."""
        path = Path(path_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / WEIGHTS_NAME).unlink(missing_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return path


LatentSource = ReasoningProjector | SoftLatent
SOURCES = ("projector", "soft")


def load_source(path_dir: str | Path, model: nn.Module) -> LatentSource:
    """The latent source saved in ``path_dir``: a :class:`SoftLatent` reading ``model`` when
    ``projector.json`` says ``"source": "soft"``, else :meth:`ReasoningProjector.load` on the
    model's device."""
    path = Path(path_dir)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (expected a directory written by a latent source's save)")
    config = json.loads(config_file.read_text())
    source = config.get("source", "projector")
    if source not in SOURCES:
        raise ValueError(f"{config_file}: source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "soft":
        soft = SoftLatent(model, max_steps=int(config.get("max_steps", 5)), output_scale=config.get("output_scale"))
        if soft.hidden_size != config.get("hidden_size", soft.hidden_size):
            raise ValueError(f"{config_file}: hidden_size {config['hidden_size']} but the model's is {soft.hidden_size}")
        return soft
    return ReasoningProjector.load(path, device=model.get_input_embeddings().weight.device)


def embedding_norm(model: nn.Module) -> float:
    """Median L2 norm of the rows of ``model``'s input embedding matrix (one row per token)."""
    return float(model.get_input_embeddings().weight.detach().float().norm(dim=-1).median())


def _last_mlp(model: nn.Module) -> nn.Module:
    """The MLP of ``model``'s last decoder layer, which must have gate/up/down projections."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    mlp = getattr(layers[-1], "mlp", None) if isinstance(layers, nn.ModuleList) and len(layers) else None
    projections = ("gate_proj", "up_proj", "down_proj")
    if mlp is None or not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in projections):
        raise ValueError(
            f"{type(model).__name__}: the Reasoning Projector copies the last decoder layer's gated MLP; "
            "expected model.get_decoder().layers[-1].mlp with gate_proj/up_proj/down_proj Linear layers "
            "(Llama/Qwen/Mistral style)"
        )
    return mlp
