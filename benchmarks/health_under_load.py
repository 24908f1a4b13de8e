"""Does one client's encoding stall everyone else? /healthz latency under maximal encodes (run by hand).

Starts `jumpscope serve` (real uvicorn, SQLite) with an SAE on Gemma 3 270M layer 9 whose features
fire about `--l0` times per token (a random JumpReLU SAE with per-feature thresholds set from the
data, so that replies are as large as the reply cap allows). Then, measured in one run:
  1. /healthz latency with the server idle (p50, p99, max);
  2. the same while `--clients` clients (default 4) each send `--rounds` maximal encodes: 16 texts
     near the 1,024-token limit, every active feature returned; and each encode's time, status and
     reply size.
The goal (issue 17): /healthz p99 under 100 ms while 4 maximal encodes run.

    .venv/bin/python benchmarks/health_under_load.py [--width 16384] [--l0 28] [--clients 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: app, and benchmarks.serve

from benchmarks.serve import TEXT_64, Server, pct

LAYER = 9


def make_sae(folder: Path, width: int, l0: float) -> Path:
    """A random JumpReLU SAE on gemma3-270m's layer-9 residual stream firing about l0 features per token."""
    import torch

    from trainer.formats.native import SAEMetadata, save_native
    from trainer.formats.tensors import sae_from_tensors
    from trainer.lm.models import load_model
    from trainer.lm.sites import harvest
    from trainer.saes.config import SAEConfig

    lm = load_model("gemma3-270m")
    ids = lm.tokenizer(TEXT_64 * 4, return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        x = harvest(lm.model, ids, None, LAYER, "resid")[0]  # (T, d_in)
    d_in = x.shape[1]
    g = torch.Generator().manual_seed(0)
    w_dec = torch.nn.functional.normalize(torch.randn(width, d_in, generator=g), dim=1)  # (F, d_in)
    pre = x @ w_dec.T  # (T, F)
    threshold = torch.quantile(pre, 1 - l0 / width, dim=0).clamp(min=1e-3)  # (F,)
    tensors = {"W_enc": w_dec.T.clone(), "W_dec": w_dec, "b_enc": torch.zeros(width), "b_dec": torch.zeros(d_in),
               "threshold": threshold}  # fmt: skip
    sae = sae_from_tensors(tensors, SAEConfig(d_in=d_in, d_sae=width, threshold_param="raw"), "bench")
    out = folder / "sae"
    save_native(out, sae, SAEMetadata(model="gemma3-270m", layer=LAYER, site="resid", context_size=1024))
    return out


def prepare(folder: Path, sae_dir: Path) -> str:
    from app.catalog.saes import import_sae
    from app.core.database import engine_for, session_scope, upgrade

    url = f"sqlite:///{folder / 'health.db'}"
    upgrade(url)
    engine = engine_for(url)
    with session_scope(engine) as session:
        import_sae(session, sae_dir, data_dir=folder / "data", name="enc", replace=True)
    engine.dispose()
    return url


async def measure(base: str, clients: int, rounds: int, idle_s: float) -> None:
    long_text = " ".join([TEXT_64] * 15)  # about 950 tokens: near the 1,024-token limit
    body = {"texts": [long_text] * 16, "include_bos": False}  # BOS: every random feature fires on its massive norm
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        await client.post("/api/v1/saes/enc/encode", json={"text": TEXT_64})  # load the model and SAE

        async def poll(until: asyncio.Event | None, seconds: float | None) -> list[float]:
            waits: list[float] = []
            end = time.monotonic() + (seconds or 1e9)
            while (until is None or not until.is_set()) and time.monotonic() < end:
                start = time.perf_counter()
                (await client.get("/healthz")).raise_for_status()
                waits.append((time.perf_counter() - start) * 1e3)
                await asyncio.sleep(0.02)
            return waits

        idle = await poll(None, idle_s)
        print(f"/healthz idle:      p50 {statistics.median(idle):6.1f} ms, p99 {pct(idle, .99):6.1f} ms, "
              f"max {max(idle):6.1f} ms ({len(idle)} requests)")  # fmt: skip
        done = asyncio.Event()
        encodes: list[tuple[int, float, int]] = []

        async def encoder() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=600) as own:
                for _ in range(rounds):
                    start = time.perf_counter()
                    reply = await own.post("/api/v1/saes/enc/encode", json=body)
                    encodes.append((reply.status_code, time.perf_counter() - start, len(reply.content)))

        async def load() -> None:
            await asyncio.gather(*(encoder() for _ in range(clients)))
            done.set()

        _, busy = await asyncio.gather(load(), poll(done, None))
        print(f"/healthz under load: p50 {statistics.median(busy):6.1f} ms, p99 {pct(busy, .99):6.1f} ms, "
              f"max {max(busy):6.1f} ms ({len(busy)} requests while {clients} clients x {rounds} maximal encodes "
              f"ran; goal p99 < 100 ms)")  # fmt: skip
        for status, seconds, size in encodes:
            print(f"  encode: {status} in {seconds:5.1f} s, {size / 1e6:5.1f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16_384, help="features of the random SAE")
    p.add_argument("--l0", type=float, default=28.0, help="features firing per token (28: replies near the cap)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1, help="maximal encodes per client")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle /healthz polling")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        url = prepare(folder, make_sae(folder, args.width, args.l0))
        server = Server(url, folder, batching=True)
        try:
            asyncio.run(measure(server.base, args.clients, args.rounds, args.idle))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
