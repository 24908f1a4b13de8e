"""Activation harvesting speed on the packaged Gemma 3 270M (run by hand, not in CI).

Prints, all measured in one run on the same packed batches of the packaged corpus:
  1. tokens/s of harvesting a middle layer with the forward pass stopped after that layer,
  2. tokens/s of a full forward pass (logits included), and the ratio of the two,
  3. for one live-training step (harvest a 4,096-token batch, then one SAE training step),
     the share of time spent in the model and in the SAE.

    .venv/bin/python benchmarks/activations.py [--layer 9] [--site resid] [--width 8192]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import trainer  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.data.text import batch_sequences, iter_documents, pack_tokens
from trainer.lm.gemma3_gguf import DEFAULT_MODEL
from trainer.lm.models import load_model
from trainer.lm.sites import harvest
from trainer.saes.config import SAEConfig
from trainer.saes.registry import build_sae
from trainer.training.malloc import keep_freed_memory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    p.add_argument("--site", default="resid")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--batch-sequences", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--rounds", type=int, default=5, help="timed batches (median reported)")
    p.add_argument("--width", type=int, default=8192, help="SAE width for the live-training split")
    args = p.parse_args()
    keep_freed_memory()

    lm = load_model(args.model)
    layer = lm.n_layers // 2 if args.layer is None else args.layer
    seqs = pack_tokens(iter_documents(None), lm.tokenizer, args.context_size)
    batches = [b for _, b in zip(range(args.rounds + 1), batch_sequences(seqs, args.batch_sequences), strict=False)]
    tokens = batches[0].input_ids.numel()
    print(f"{args.model}: {lm.n_layers} layers, layer {layer} {args.site}, {tokens} tokens per forward pass, "
          f"{torch.get_num_threads()} threads")  # fmt: skip

    def timed(fn) -> float:
        times = []
        for batch in batches[1:]:
            start = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with torch.no_grad():
        for b in batches[:1]:  # warm-up
            harvest(lm.model, b.input_ids, b.attention_mask, layer, args.site)
            lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
        t_harvest = timed(lambda b: harvest(lm.model, b.input_ids, b.attention_mask, layer, args.site))
        t_full = timed(lambda b: lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False))
    print(f"harvest with early stop: {tokens / t_harvest:10,.0f} tok/s")
    print(f"full forward pass:       {tokens / t_full:10,.0f} tok/s")
    print(f"ratio harvest / full:    {t_full / t_harvest:10.2f}x")

    # One live-training step: harvest 4,096 tokens (several forward passes), then one SAE step.
    acts = harvest(lm.model, batches[1].input_ids, batches[1].attention_mask, layer, args.site)
    d_in = acts.shape[-1]
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=args.width))
    opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999), fused=True)
    x = acts.flatten(0, 1)[:4096].contiguous()
    x = torch.cat([x] * (4096 // x.shape[0] + 1))[:4096] / x.pow(2).sum(-1).mean().sqrt()

    def sae_step() -> None:
        out = sae.training_step(x, 1e-3)
        out.loss.backward()
        sae.project_decoder_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.normalize_decoder()

    sae_step()
    start = time.perf_counter()
    for _ in range(3):
        sae_step()
    t_sae = (time.perf_counter() - start) / 3
    t_model = t_harvest * 4096 / tokens
    share = t_model / (t_model + t_sae)
    print(f"live step (4,096 tokens, width {args.width}): model {t_model:.2f} s, SAE {t_sae:.2f} s "
          f"-> {100 * share:.0f}% of the step in the model, {100 * (1 - share):.0f}% in the SAE")  # fmt: skip


if __name__ == "__main__":
    main()
