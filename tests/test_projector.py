"""Reasoning Projector: initialisation from the last MLP, shape, and a bit-identical save/load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from thinklean.models.projector import ReasoningProjector


def _last_mlp(model):
    return model.model.layers[-1].mlp


def test_every_block_starts_as_a_copy_of_the_last_decoder_mlp(tiny_model):
    projector = ReasoningProjector.from_model(tiny_model, output_norm="none")
    mlp = _last_mlp(tiny_model)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert len(projector.blocks) == 3
        for block in projector.blocks:
            assert torch.equal(block(x), mlp(x))
        # The paper's projector: three blocks in sequence, no residual and no norm between them.
        assert torch.equal(projector(x), mlp(mlp(mlp(x))))
    assert projector(x).shape == (2, 3, 64)
    assert (projector.hidden_size, projector.intermediate_size, projector.hidden_act) == (64, 128, "silu")


def test_the_default_output_has_the_median_token_embedding_norm_and_the_blocks_direction(tiny_model):
    projector = ReasoningProjector.from_model(tiny_model)
    mlp = _last_mlp(tiny_model)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0))
    median = tiny_model.get_input_embeddings().weight.norm(dim=-1).median()
    with torch.no_grad():
        out, blocks = projector(x), mlp(mlp(mlp(x)))
    assert projector.output_norm == "embedding"
    torch.testing.assert_close(out.norm(dim=-1), median.expand(2, 3))
    blocks = blocks.double()  # a fresh MLP applied three times gives ~1e-18: float64 for the reference norm
    torch.testing.assert_close(out.double(), blocks / blocks.norm(dim=-1, keepdim=True) * median.double(),
                               rtol=1e-5, atol=1e-6)


def test_projector_weights_are_copies_not_shared_with_the_model(tiny_model):
    projector = ReasoningProjector.from_model(tiny_model, num_blocks=2, max_steps=4)
    before = _last_mlp(tiny_model).gate_proj.weight.clone()
    with torch.no_grad():
        projector.blocks[0].gate_proj.weight.add_(1.0)
    assert torch.equal(_last_mlp(tiny_model).gate_proj.weight, before)
    assert len(projector.blocks) == 2 and projector.max_steps == 4


def test_save_load_round_trip_is_bit_identical(tiny_model, tmp_path):
    projector = ReasoningProjector.from_model(tiny_model)
    with torch.no_grad():  # make the blocks differ from each other, as after training
        for p in projector.parameters():
            p.add_(0.01 * torch.randn_like(p))
    projector.save(tmp_path / "proj")

    assert sorted(f.name for f in (tmp_path / "proj").iterdir()) == ["projector.json", "projector.safetensors"]
    config = json.loads((tmp_path / "proj" / "projector.json").read_text())
    assert config == {"num_blocks": 3, "hidden_size": 64, "intermediate_size": 128, "hidden_act": "silu",
                      "max_steps": 5, "dtype": "float32", "bias": False, "output_norm": "embedding"}

    loaded = ReasoningProjector.load(tmp_path / "proj")
    original_state, loaded_state = projector.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(tensor, loaded_state[name]), name
    assert loaded.max_steps == 5

    # Identical latent vectors from real hidden states.
    ids = torch.tensor([[5, 17, 40, 9]])
    with torch.no_grad():
        hidden = tiny_model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        assert torch.equal(projector(hidden), loaded(hidden))


def test_bfloat16_projector_reloads_in_bfloat16(tiny_model, tmp_path):
    projector = ReasoningProjector.from_model(tiny_model.to(torch.bfloat16))
    assert projector.dtype == torch.bfloat16
    projector.save(tmp_path)
    loaded = ReasoningProjector.load(tmp_path)
    assert loaded.dtype == torch.bfloat16
    assert json.loads((tmp_path / "projector.json").read_text())["dtype"] == "bfloat16"
    for name, tensor in projector.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="projector.json"):
        ReasoningProjector.load(tmp_path)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="num_blocks"):
        ReasoningProjector(64, 128, num_blocks=0)
    with pytest.raises(ValueError, match="max_steps"):
        ReasoningProjector(64, 128, max_steps=0)
    with pytest.raises(ValueError, match="hidden_act"):
        ReasoningProjector(64, 128, hidden_act="nope")
    with pytest.raises(ValueError, match="output_norm"):
        ReasoningProjector(64, 128, output_norm="layer")


def test_a_projector_saved_before_output_norm_existed_loads_as_the_papers(tiny_model, tmp_path):
    projector = ReasoningProjector.from_model(tiny_model, output_norm="none")
    projector.save(tmp_path)
    config = json.loads((tmp_path / "projector.json").read_text())
    del config["output_norm"]
    (tmp_path / "projector.json").write_text(json.dumps(config))
    save_file({k: v for k, v in projector.state_dict().items() if k != "output_scale"},
              str(tmp_path / "projector.safetensors"))
    loaded = ReasoningProjector.load(tmp_path)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert loaded.output_norm == "none" and torch.equal(loaded(x), projector(x))
