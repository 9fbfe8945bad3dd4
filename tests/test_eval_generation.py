import torch

from thinklean.data.formats import format_prompt
from thinklean.eval.evaluate import EvalConfig, arith_examples, run_generation
from thinklean.rollout import SamplingConfig, generate


def test_progress_chunks_give_the_same_samples_as_one_generate_call(tiny_model, tiny_tokenizer):
    examples = arith_examples(7, "test", seed=0)
    # 3 samples and batches of 4 rows: chunks of lcm(4, 3) / 3 = 4 problems (12 rows, 3 whole batches)
    config = EvalConfig(max_new_tokens=5, temperature=1.0, samples=3, batch_size=4, seed=1)
    done = []
    records = run_generation(tiny_model, tiny_tokenizer, examples, config, on_progress=done.append)
    assert done == [4, 3]

    generator = torch.Generator().manual_seed(1)
    whole = generate(tiny_model, tiny_tokenizer, [format_prompt(e.prompt, tiny_tokenizer) for e in examples], 3,
                     SamplingConfig(max_new_tokens=5, temperature=1.0, batch_size=4), generator=generator)
    assert [r.text for r in records] == whole.texts
    assert [r.prompt_index for r in records] == whole.group_ids.tolist()
    assert [r.response_tokens for r in records] == whole.lengths.tolist()
