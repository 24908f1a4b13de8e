"""Steered generation against plain generation, tokens per second, in one run (run by hand).

On the CPU demo model (the packaged Gemma 3 270M, layer 9 residual stream) with the demo's SAE when
runs/demo/sae holds it, else a random JumpReLU of width 4,096 (the cost of an intervention does not
depend on what the SAE learned), it times, interleaved round by round on one prompt:

  plain      model.generate, greedy, no hooks: the model's own generation (1 row)
  loop       trainer.lm.generation.generate_steered with no interventions: our KV-cached loop (1 row,
             nothing hooked), to separate the loop's cost from the steering's
  steered    generate_steered with the interventions: baseline and steered row in one batch of 2,
             the hook encoding the steered row at every new position

every run producing exactly --new-tokens tokens per row (no stop token), and prints the median
tokens per second of each (tokens of one continuation per second) and steered / plain.

    .venv/bin/python benchmarks/steer.py                 # 64 new tokens, 5 rounds
    .venv/bin/python benchmarks/steer.py --quick         # 16 new tokens, 2 rounds
    .venv/bin/python benchmarks/steer.py --model tiny-gemma2 --layer 1 --width 256 --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:
    import app  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.formats.native import load_native
from trainer.formats.tensors import sae_from_tensors
from trainer.lm.generation import GenerationConfig, generate_steered
from trainer.lm.interventions import Add, Clamp, Intervention
from trainer.lm.models import LoadedModel, load_model
from trainer.saes.base import SAE
from trainer.saes.config import SAEConfig

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press into a system that"
)
DEMO_SAE = Path("runs/demo/sae")


def random_jumprelu(d_in: int, d_sae: int, seed: int = 0) -> SAE:
    """A random JumpReLU in inference form: unit decoder rows, encoder = decoder^T, thresholds that let some fire."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)  # (d_sae, d_in)
    tensors = {"W_enc": w_dec.T.clone(), "W_dec": w_dec, "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in),
               "threshold": torch.rand(d_sae, generator=g) * d_in**0.5}  # fmt: skip
    return sae_from_tensors(tensors, SAEConfig(d_in=d_in, d_sae=d_sae, threshold_param="raw"), "benchmark")


def the_sae(lm: LoadedModel, width: int, folder: Path | None) -> tuple[SAE, str]:
    """The SAE to steer with and where it came from."""
    if folder is not None and (folder / "cfg.json").is_file():
        return load_native(folder, device=lm.device).sae, str(folder)
    return random_jumprelu(lm.d_model, width).to(lm.device), f"random JumpReLU, width {width}"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark; returns (and prints) its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m", help="model name or folder (default: the demo's)")
    parser.add_argument("--layer", type=int, default=9, help="the SAE's layer (resid site)")
    parser.add_argument("--width", type=int, default=4096, help="width of the random SAE when there is no demo SAE")
    parser.add_argument("--sae", type=Path, default=DEMO_SAE, help="a native SAE folder to use if it exists")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="16 new tokens, 2 rounds")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.new_tokens, args.rounds = 16, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device="cpu")
    sae, source = the_sae(lm, args.width, args.sae)
    sae.eval().requires_grad_(False)
    ids = [lm.tokenizer.bos_token_id, *lm.tokenizer(PROMPT, add_special_tokens=False).input_ids]
    steer: list[Intervention] = [Add(1, 50.0), Clamp(2, 0.0)]
    config = GenerationConfig(max_new_tokens=args.new_tokens)  # no stop ids: every run makes new_tokens tokens
    n = args.new_tokens
    prompt = torch.tensor([ids])

    model: Any = lm.model  # a transformers causal LM: .generate

    def plain() -> None:
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False)  # fmt: skip
        assert out.shape[1] == len(ids) + n

    def loop() -> None:
        generate_steered(lm.model, sae, ids, [], layer=args.layer, site="resid", config=config)

    def steered() -> None:
        generate_steered(lm.model, sae, ids, steer, layer=args.layer, site="resid", config=config, start=1)

    runs = {"plain": plain, "loop": loop, "steered": steered}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in runs.items():
                seconds[name].append(timed(fn))
    rate = {name: n / statistics.median(times) for name, times in seconds.items()}
    figures: dict[str, object] = {
        "model": args.model, "layer": args.layer, "sae": source, "d_sae": int(sae.cfg.d_sae), "prompt_tokens": len(ids),
        "new_tokens": n, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "tokens_per_s": {k: round(v, 2) for k, v in rate.items()},
        "steered_over_plain": round(rate["steered"] / rate["plain"], 3),
        "loop_over_plain": round(rate["loop"] / rate["plain"], 3),
    }  # fmt: skip
    print(f"{args.model} layer {args.layer}, SAE: {source}; {len(ids)} prompt tokens, {n} new tokens per row, "
          f"median of {args.rounds} rounds, {torch.get_num_threads()} threads")  # fmt: skip
    for name, label in (("plain", "model.generate (1 row, no hooks)"), ("loop", "our loop, no interventions (1 row)"),
                        ("steered", "steered + baseline (2 rows, hooked)")):  # fmt: skip
        print(f"  {label:<38} {rate[name]:8.2f} tokens/s per continuation")
    ratio, loop_ratio = figures["steered_over_plain"], figures["loop_over_plain"]
    print(f"  steered / plain: {ratio:.3f}   (our loop / plain: {loop_ratio:.3f})")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
