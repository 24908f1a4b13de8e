"""Serving speed against real uvicorn on loopback (run by hand, not in CI).

Prints, measured in one run (each server started fresh with `jumpscope serve`):
  1. encode latency p50/p95 of a 64-token text, sequential requests;
  2. encode throughput with 1 and with 16 concurrent clients, with request batching on and off,
     and the ratio of 16-client throughput to sequential (goal: >= 3x with batching on a CPU);
  3. feature-detail and feature-list latency p50/p95 with a 16,384-feature SAE fully indexed
     (goal: p50 under 20 ms on SQLite).

The encode SAE is the demo's (`jumpscope demo` first; `--sae DIR` for another native folder on
Gemma 3 270M); the 16k SAE's index rows are synthetic, written through the indexer's own path.

    .venv/bin/python benchmarks/serve.py [--sae runs/demo/sae] [--requests 24]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

try:
    import app  # noqa: F401
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT_64 = (  # 64 Gemma 3 tokens with BOS
    "The committee met on Tuesday to discuss the new bridge across the river. Engineers said the steel would "
    "arrive in spring, and the mayor promised that work would begin before the summer floods. Residents asked "
    "whether the old ferry would keep running until the bridge opened, and the council agreed to fund it for one "
    "more year again."
)


def pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(folder: Path, sae_dir: Path, width: int) -> str:
    """A SQLite store with the encode SAE registered and a synthetic fully indexed `width`-feature SAE."""
    import torch
    from sqlalchemy import update

    from app.catalog.saes import import_sae
    from app.core.database import engine_for, session_scope, upgrade
    from app.core.tables import IndexRun, Model, SAERow
    from app.features.indexer import write_rows
    from benchmarks.index import synthetic_result

    url = f"sqlite:///{folder / 'serve.db'}"
    upgrade(url)
    engine = engine_for(url)
    with session_scope(engine) as session:
        import_sae(session, sae_dir, data_dir=folder / "data", name="enc", replace=True)
        model = Model(name="bench-model")
        sae = SAERow(name="wide", model=model, architecture="jumprelu", d_in=640, d_sae=width, path="/")
        session.add(sae)
        session.flush()
        run = IndexRun(sae_id=sae.id, status="complete", tokens=1_000_000)
        session.add(run)
        session.flush()
        sae_id, run_id = sae.id, run.id
    write_rows(engine, run_id, synthetic_result(width), vocab=[f"t{i}" for i in range(262_144)], batch=512)
    with session_scope(engine) as session:
        session.execute(update(SAERow).where(SAERow.id == sae_id).values(index_run_id=run_id, indexed_tokens=1_000_000))
    del torch
    engine.dispose()
    return url


class Server:
    def __init__(self, url: str, folder: Path, batching: bool) -> None:
        self.port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "JUMPSCOPE_DATA_DIR": str(folder / "data"),
               "JUMPSCOPE_ENCODE_BATCHING": str(batching).lower(), "JUMPSCOPE_DEVICE": "cpu"}  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(self.port),
                                      "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def encode_loop(base: str, clients: int, per_client: int) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) for `clients` concurrent clients."""
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient) -> None:
        for _ in range(per_client):
            start = time.perf_counter()
            reply = await client.post("/api/v1/saes/enc/encode", json={"text": TEXT_64, "top_k": 16})
            reply.raise_for_status()
            latencies.append((time.perf_counter() - start) * 1e3)

    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        await client.post("/api/v1/saes/enc/encode", json={"text": TEXT_64})  # load model and SAE
        start = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return clients * per_client / elapsed, latencies


def read_latency(base: str, width: int, n: int) -> tuple[list[float], list[float]]:
    import random

    rng = random.Random(0)
    detail, listing = [], []
    with httpx.Client(base_url=base, timeout=60) as client:
        client.get("/api/v1/saes/wide/features/0")
        for _ in range(n):
            start = time.perf_counter()
            client.get(f"/api/v1/saes/wide/features/{rng.randrange(width)}").raise_for_status()
            detail.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            params = {"sort": "frequency", "order": "desc", "limit": 50, "offset": rng.randrange(1000)}
            client.get("/api/v1/saes/wide/features", params=params).raise_for_status()
            listing.append((time.perf_counter() - start) * 1e3)
    return detail, listing


def ceiling(sae_dir: Path, rounds: int = 5) -> tuple[float, float]:
    """In-process tokens/s of forward + encode for 1 text and for 16 texts of 64 tokens: the batching ceiling."""
    import torch

    from trainer.formats.native import load_native
    from trainer.lm.models import load_model
    from trainer.lm.sites import harvest

    loaded = load_native(sae_dir)
    lm = load_model(loaded.meta.model or "gemma3-270m")
    ids = lm.tokenizer(TEXT_64, return_tensors="pt").input_ids  # (1, 64)
    rates = []
    with torch.no_grad():
        for n in (1, 16):
            batch = ids.repeat(n, 1)
            harvest(lm.model, batch, None, loaded.meta.layer or 0, "resid")
            start = time.perf_counter()
            for _ in range(rounds):
                acts = harvest(lm.model, batch, None, loaded.meta.layer or 0, "resid")
                loaded.sae.encode(acts.reshape(-1, acts.shape[-1]))
            rates.append(n * ids.shape[1] * rounds / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", type=Path, default=Path("runs/demo/sae"), help="native SAE folder for encoding")
    p.add_argument("--width", type=int, default=16_384, help="features of the indexed SAE for read latency")
    p.add_argument("--requests", type=int, default=24, help="encode requests per measurement (bounded loops)")
    p.add_argument("--reads", type=int, default=200)
    args = p.parse_args()
    if not (args.sae / "sae.safetensors").exists():
        raise SystemExit(f"{args.sae} holds no SAE: run `jumpscope demo` first or pass --sae DIR")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        url = prepare(folder, args.sae, args.width)
        print(f"store prepared in {time.perf_counter() - start:.0f} s (SQLite, {args.width} features indexed)")
        results: dict[bool, dict[int, float]] = {}
        for batching in (True, False):
            server = Server(url, folder, batching)
            try:
                seq_rate, seq_lat = asyncio.run(encode_loop(server.base, 1, args.requests))
                par_rate, par_lat = asyncio.run(encode_loop(server.base, 16, max(1, args.requests // 8)))
                results[batching] = {1: seq_rate, 16: par_rate}
                print(f"encode, batching {'on ' if batching else 'off'}: sequential {seq_rate:5.2f} req/s "
                      f"(p50 {pct(seq_lat, .5):6.0f} ms, p95 {pct(seq_lat, .95):6.0f} ms); 16 clients "
                      f"{par_rate:5.2f} req/s (p50 {pct(par_lat, .5):6.0f} ms, p95 {pct(par_lat, .95):6.0f} ms); "
                      f"ratio {par_rate / seq_rate:4.2f}x")  # fmt: skip
                if batching:
                    detail, listing = read_latency(server.base, args.width, args.reads)
                    print(f"feature detail ({args.width} features indexed): p50 {statistics.median(detail):.1f} ms, "
                          f"p95 {pct(detail, .95):.1f} ms; feature list page: p50 {statistics.median(listing):.1f} ms, "
                          f"p95 {pct(listing, .95):.1f} ms")  # fmt: skip
            finally:
                server.stop()
        on, off = results[True], results[False]
        print(
            f"16-client throughput, batching on vs off: {on[16] / off[16]:.2f}x; "
            f"batching on, 16 clients vs sequential: {on[16] / on[1]:.2f}x (goal >= 3x)"
        )
        one, sixteen = ceiling(args.sae)
        print(f"ceiling, in process without HTTP: forward + encode of 1 text {one:.0f} tok/s, of 16 texts in one "
              f"batch {sixteen:.0f} tok/s: batching can gain at most {sixteen / one:.2f}x on this machine; "
              f"the server reaches {on[16] * 64 / sixteen:.0%} of the batched rate")  # fmt: skip


if __name__ == "__main__":
    main()
