"""One training step on a fixed batch, for the one-process vs two-process test (test_train.py).

Run as ``python _dist_worker.py MODEL_DIR OUT.pt`` or under ``accelerate launch --num_processes 2
--cpu``. Sampling is replaced by a deterministic function of each prompt (its RNG stream differs with
the number of processes); everything after it — outcomes, teacher contexts, negatives, teacher
scoring, the loss, its global normalizers and the gradient all-reduce — is the real loop.
"""

import re
import sys

import torch

import credit.train as train_mod
from credit.config import load_config
from credit.rollout import Rollouts


def norm_in_its_dtype(self, hidden):
    """``LlamaRMSNorm.forward`` in the model's dtype. transformers' computes in float32 whatever the dtype,
    so a float64 model's gradients round differently when rows are grouped differently (prefix sharing
    per process; test_scoring.py); tests that compare such groupings patch this in."""
    return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def fixed_sample(model, tokenizer, prompts, config, generator=None):
    responses = []
    for p in prompts:
        g = torch.Generator().manual_seed(sum(p) * 7919 + len(p))
        for _ in range(config.num_samples):
            n = int(torch.randint(2, config.max_new_tokens + 1, (), generator=g))
            responses.append(torch.randint(10, 2000, (n,), generator=g).tolist())
    # the first rollout of each prompt answers an addition prompt right: groups mix rewards 1 and 0
    sums = [sum(int(v) for v in re.findall(r"\d+", tokenizer.decode(p).split("What is")[-1])[:2]) for p in prompts]
    texts = [str(sums[i // config.num_samples]) if i % config.num_samples == 0 else tokenizer.decode(r)
             for i, r in enumerate(responses)]
    return Rollouts(prompt_ids=[list(p) for p in prompts for _ in range(config.num_samples)],
                    response_ids=responses, truncated=[False] * len(responses), texts=texts,
                    group=[i // config.num_samples for i in range(len(responses))], num_samples=config.num_samples)


def main(model_dir: str, out: str, *overrides: str) -> None:
    train_mod.sample = fixed_sample
    cfg = load_config(None, [f"model.name={model_dir}", "device=cpu", "out_dir=/tmp/credit-dist-unused",
                             "rollout.prompts_per_step=4", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6",
                             "optim.micro_batch=2", "optim.lr=1e-3", "credit.negative_strategy=roll", "model.dtype=float64",
                             "task.options={answer_feedback: true}", *overrides])
    trainer = train_mod.Trainer(cfg)
    # two steps: Adam's first update is sign-like, the second depends on gradient magnitudes
    metrics = [trainer.run_step(step)[0] for step in range(2)]
    if trainer.acc.is_main_process:
        params = {k: v.detach().cpu() for k, v in trainer.unwrapped.state_dict().items()}
        torch.save({"params": params, "metrics": metrics, "world": trainer.acc.num_processes}, out)
    trainer.acc.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:])
