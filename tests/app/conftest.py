"""Fixtures of the app tests: a tiny SAE registered (and indexed) in a real store."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sqlalchemy import Engine

from app.catalog.saes import import_sae
from app.core.database import session_scope
from trainer.formats.native import SAEMetadata, save_native
from trainer.formats.tensors import sae_from_tensors
from trainer.saes.config import SAEConfig

D_SAE = 40
CONTEXT = 48


def random_jumprelu(d_in: int, d_sae: int = D_SAE, seed: int = 0) -> Any:
    """A random JumpReLU SAE whose features fire on the tiny model's residual stream."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)
    tensors = {
        "W_enc": w_dec.T.clone() * 0.5,
        "W_dec": w_dec,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "b_dec": torch.zeros(d_in),
        "threshold": torch.rand(d_sae, generator=g) * 0.5 + 0.05,
    }
    return sae_from_tensors(tensors, SAEConfig(d_in=d_in, d_sae=d_sae, threshold_param="raw"), "test")


SENTENCE = "the quick brown fox jumps over lazy dog sparse features fire on some tokens and not others"
WORDS = SENTENCE.split()


@pytest.fixture(scope="session")
def short_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A jsonl dataset of 300 short documents, so top examples can come from many documents."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    lines = [json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(5, 30)))}) for _ in range(300)]
    path.write_text("\n".join(lines) + "\n")
    return path


def register_tiny(engine: Engine, folder: Path, model_dir: Path, docs: Path) -> Any:
    """Register a random JumpReLU SAE on the tiny model's layer 1 resid as 'tiny'; returns the SAE."""
    sae = random_jumprelu(64)
    meta = SAEMetadata(model=str(model_dir), layer=1, site="resid", context_size=CONTEXT, dataset=str(docs))
    save_native(folder / "src", sae, meta)
    with session_scope(engine) as session:
        import_sae(session, folder / "src", data_dir=folder / "data", name="tiny")
    return sae


def index_tiny(engine: Engine) -> None:
    """Index 'tiny' over 1,500 tokens of the short documents (small top-K, windows and bands)."""
    from app.features.indexer import IndexOptions, index_sae
    from trainer.analysis.feature_stats import StatsConfig

    stats = StatsConfig(top_k=4, window=16, n_bands=3, band_size=2, n_bins=10)
    opts = IndexOptions(tokens=1500, stats=stats, device="cpu",
                        progress=False)  # fmt: skip
    index_sae(engine, "tiny", opts)


@pytest.fixture
def registered(store: Engine, tiny_model_dir: Path, tmp_path: Path, short_docs: Path) -> tuple[Engine, Any]:
    """The store with one SAE on the tiny model's layer 1 residual stream registered as 'tiny'."""
    return store, register_tiny(store, tmp_path, tiny_model_dir, short_docs)


@pytest.fixture
def indexed(registered: tuple[Engine, Any]) -> tuple[Engine, Any]:
    """`registered`, indexed over 1,500 tokens of the short documents."""
    index_tiny(registered[0])
    return registered


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, short_docs: Path
) -> Any:
    """(url, engine, sae, folder): a migrated store with 'tiny' registered and indexed, shared by a module's tests.

    Tests using it must not depend on each other's writes (use their own feature indices and raters).
    """
    from app.core.database import engine_for, upgrade
    from tests.conftest import database

    folder = tmp_path_factory.mktemp(f"shared-{request.param}")
    with database(request.param, folder) as url:
        upgrade(url)
        engine = engine_for(url)
        sae = register_tiny(engine, folder, tiny_model_dir, short_docs)
        index_tiny(engine)
        yield url, engine, sae, folder


# --- real servers ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until GET base/healthz answers 200; fails at once if the process exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            out = proc.communicate()[0] if proc.stdout is not None else ""
            raise AssertionError(f"the server exited with {proc.returncode}: {out}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"the server at {base} did not start within {timeout:.0f} s")


@dataclass
class Served:
    """A running `jumpscope serve`: its base URL, and its output once it has stopped."""

    base: str
    proc: subprocess.Popen[str]
    output: str = ""


@contextmanager
def jumpscope_serve(url: str, folder: Path, *args: str) -> Iterator[Served]:
    """`jumpscope serve` (real uvicorn) on a free loopback port over the store at url; stopped with SIGTERM."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "JUMPSCOPE_DATA_DIR": str(folder / "data"), "JUMPSCOPE_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    served = Served(f"http://127.0.0.1:{port}", proc)
    try:
        wait_ready(served.base, proc)
        yield served
    finally:
        proc.terminate()
        served.output = proc.communicate(timeout=30)[0]


CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium: the browser tests drive it through playwright (never `playwright install`)."""
BROWSER_TIMEOUT_MS = 60_000


def require_chromium() -> Any:
    """playwright's sync API, or skip the calling test module (call it at module level)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium chromium-driver", allow_module_level=True)
    return sync_api


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, one per test module."""
    with require_chromium().sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) that accepts downloads."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    """A page in a fresh context; a JavaScript error on it fails the test."""
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    assert not errors, errors
