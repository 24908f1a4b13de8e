"""The text -> features page (/saes/NAME/text) through the real app and store, without JavaScript:
tokens, the token panel and the summary in the first render, highlighting, SAEs side by side from
one forward pass, escaping, and every bad input answered with a clear message, never a 500."""

from __future__ import annotations

import html as html_lib
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import torch
from fastapi.testclient import TestClient

from tests.app.conftest import SENTENCE
from tests.app.test_api import make_client
from tests.app.textview.conftest import FOREIGN

TEXT = SENTENCE


@pytest.fixture(scope="module")
def client(text_store: Any) -> Iterator[TestClient]:
    url, _, _, folder = text_store
    with make_client(url, folder) as c:
        yield c


def page_of(client: TestClient, sae: str = "tiny", status: int = 200, **params: Any) -> str:
    reply = client.get(f"/saes/{sae}/text?{urlencode(params, doseq=True)}")
    assert reply.status_code == status, reply.text[:3000]
    assert reply.headers["content-type"].startswith("text/html")
    return str(reply.text)


def encoded(client: TestClient, sae: str, text: str = TEXT) -> dict[str, Any]:
    reply = client.post(f"/api/v1/saes/{sae}/encode", json={"text": text})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def expected_summary(body: dict[str, Any]) -> list[tuple[int, float, int]]:
    """(feature, max, tokens) over the ordinary tokens, by max then tokens then index: what the page must list."""
    best: dict[int, tuple[float, int]] = {}
    for special, row in zip(body["special"], body["activations"], strict=True):
        if special:
            continue
        for a in row:
            high, count = best.get(a["index"], (0.0, 0))
            best[a["index"]] = (max(high, a["value"]), count + 1)
    return sorted(((i, m, c) for i, (m, c) in best.items()), key=lambda t: (-t[1], -t[2], t[0]))


def summary_links(page: str) -> list[list[int]]:
    """Per summary table (one per SAE), the feature indices its rows link to, in order."""
    tables = re.findall(r'<table class="data summary">(.*?)</table>', page, flags=re.S)
    return [[int(i) for i in re.findall(r'<td><a href="/saes/[^/]+/features/(\d+)">', t)] for t in tables]


def token_buttons(page: str) -> list[str]:
    box = re.search(r'<p class="ex text-tokens" id="text-tokens">(.*?)</p>', page, flags=re.S)
    assert box, "no tokens on the page"
    return re.findall(r"<button [^>]*>.*?</button>", box.group(1), flags=re.S)


def island(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="text-data">(.*?)</script>', page, flags=re.S)
    assert match, "no data for the page script"
    return dict(json.loads(match.group(1)))


def test_first_render_has_tokens_and_the_summary(client: TestClient) -> None:
    page = page_of(client, text=TEXT)
    body = encoded(client, "tiny")
    buttons = token_buttons(page)
    assert len(buttons) == len(body["tokens"])
    assert html_lib.unescape(re.sub(r"<[^>]+>", "", buttons[0])) == "<bos>"
    assert 'class="t sp"' in buttons[0] and 'tabindex="0"' in buttons[0] and 'tabindex="-1"' in buttons[1]
    want = expected_summary(body)
    assert want, "the tiny SAE should fire on the sentence"
    [links] = summary_links(page)
    assert links == [i for i, _, _ in want[:24]]
    first_row = re.search(r'<table class="data summary">.*?<tbody>\s*<tr>(.*?)</tr>', page, flags=re.S)
    assert first_row is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', first_row.group(1))
    assert cells == [format(want[0][1], ".3g"), str(want[0][2])]
    assert f"{len(body['tokens'])} tokens; {len(want)} features active." in page
    # a token's tooltip lists its strongest features (the no-JS hover)
    top = [a for a in body["activations"][3][:3]]
    title = re.search(r'title="([^"]*)"', buttons[3])
    assert title and html_lib.unescape(title.group(1)).startswith(f"#{top[0]['index']} ")
    data = island(page)
    assert [s["name"] for s in data["saes"]] == ["tiny"] and data["highlight"] is None
    assert data["saes"][0]["tokens"][3][0][0] == top[0]["index"]
    # the page links to itself from the SAE page, and the form keeps the text
    assert 'href="/saes/tiny/text"' in client.get("/saes/tiny").text
    assert f">{TEXT}</textarea>" in page


def test_highlight_and_token_panel_are_urls(client: TestClient, text_store: Any) -> None:
    body = encoded(client, "tiny")
    feature, high, _ = expected_summary(body)[0]
    page = page_of(client, text=TEXT, hl=f"tiny:{feature}", pos=3)
    buttons = token_buttons(page)
    values = [next((a["value"] for a in row if a["index"] == feature), 0.0) for row in body["activations"]]
    peak = max(range(len(values)), key=lambda i: (values[i], -i))
    assert "max" in re.search(r'class="([^"]*)"', buttons[peak]).group(1).split()  # type: ignore[union-attr]
    coloured = [i for i, b in enumerate(buttons) if "background:" in b]
    assert coloured == [i for i, v in enumerate(values) if v > 0]
    assert f'name="hl" value="tiny:{feature}" class="small-button" aria-pressed="true"' in page
    assert f'<input type="hidden" name="hl" value="tiny:{feature}">' in page
    # the scale is the dashboard's: the indexed max activation when larger than the max here
    index_max = client.get(f"/api/v1/saes/tiny/features/{feature}").json()["max_activation"]
    assert f"to {format(max(index_max, high), '.3g')} (dark orange" in page
    panel = re.search(r'<section id="token-panel".*?</section>', page, flags=re.S)
    assert panel is not None and "Token 3:" in panel.group(0)
    listed = [int(i) for i in re.findall(r'href="/saes/tiny/features/(\d+)"', panel.group(0))]
    assert listed == [a["index"] for a in body["activations"][3][:8]]


def test_model_and_user_text_is_escaped(client: TestClient) -> None:
    evil = "<script>alert(1)</script> \"quoted\" 'single' & more"
    page = page_of(client, text=evil, pos=1)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the textarea and the hidden field
    assert page.count("<script") == 3  # app.js, textview.js and the JSON block, nothing from the text
    assert any("&lt;" in b for b in token_buttons(page))  # the '<' of the text is a token, shown as text


def test_saes_side_by_side_share_one_forward_pass(client: TestClient) -> None:
    page_of(client, text="warm up", compare=["tiny-l0", "tiny-attn"])  # loads the model and the three SAEs
    calls: list[str] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if type(module).__name__.endswith("DecoderLayer"):
            calls.append(f"layer{module.self_attn.layer_idx}")  # type: ignore[union-attr]

    def start(module: torch.nn.Module, args: Any) -> None:
        if type(module).__name__.endswith("ForCausalLM"):
            calls.append("model")

    handles = [torch.nn.modules.module.register_module_forward_hook(hook),
               torch.nn.modules.module.register_module_forward_pre_hook(start)]  # fmt: skip
    try:
        page = page_of(client, text=TEXT, compare=["tiny-l0", "tiny-attn"])
    finally:
        for h in handles:
            h.remove()
    # one pass for all three SAEs, stopped after layer 1 (the deepest: 'tiny' reads layer 1's output)
    assert calls == ["model", "layer0", "layer1"], calls
    assert [s["name"] for s in island(page)["saes"]] == ["tiny", "tiny-l0", "tiny-attn"]
    columns = summary_links(page)
    assert len(columns) == 3
    for name, links in zip(["tiny", "tiny-l0", "tiny-attn"], columns, strict=True):
        assert links == [i for i, _, _ in expected_summary(encoded(client, name))[:24]], name
    assert page.count('<input type="hidden" name="compare"') == 2
    assert re.search(r'<input type="checkbox" name="compare" value="tiny-l0" checked>', page)
    assert FOREIGN not in re.search(r'<fieldset class="compare">.*?</fieldset>', page, flags=re.S).group(0)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sae", "params", "status", "message"),
    [
        ("nope", {"text": TEXT}, 404, "no SAE named &#39;nope&#39;"),
        ("tiny", {"text": TEXT, "compare": "nope"}, 404, "no SAE named &#39;nope&#39;"),
        ("tiny", {"text": TEXT, "compare": FOREIGN}, 422, "cannot be compared with tiny in one forward pass"),
        ("tiny", {"text": ""}, 422, "The text is empty"),
        ("tiny", {"text": "   \n "}, 422, "The text is empty"),
        ("tiny", {"text": "x" * 4001}, 422, "this page takes at most 4,000"),
        ("tiny", {"text": "word " * 200}, 422, "over the limit of 64 tokens per text"),
        (FOREIGN, {"text": TEXT}, 503, "No encoder is available: cannot load model"),
    ],
)
def test_bad_input_is_a_clear_message_never_a_500(
    client: TestClient, sae: str, params: dict[str, Any], status: int, message: str
) -> None:
    page = page_of(client, sae, status, **params)
    assert message in page
    if status != 404:
        assert 'id="text-form"' in page and 'id="text-tokens"' not in page  # the form stays, no half results


def test_what_cannot_be_used_is_ignored_with_a_note(client: TestClient) -> None:
    page = page_of(client, text=TEXT, hl="tiny:99999", pos=999)
    assert "Nothing highlighted: tiny has features 0 to 39." in page
    assert "Token features</h2>" in page and "background:" not in "".join(token_buttons(page))
    page = page_of(client, text=TEXT, hl="tiny-l0:1")
    assert "Nothing highlighted: &#39;tiny-l0&#39; is not one of the SAEs on this page." in page
    assert "is not SAE:FEATURE" in page_of(client, text=TEXT, hl="garbage")
    unknown = page_of(client, text=TEXT, compare=[f"x{i}" for i in range(3)], status=404)
    assert "no SAE named &#39;x0&#39;" in unknown
    assert "Text → features" in page_of(client)  # no text yet: just the form


def test_stored_explanations_show_next_to_their_features(client: TestClient, text_store: Any) -> None:
    from sqlalchemy import select

    from app.core.database import session_scope
    from app.core.tables import SAERow
    from app.interp.store import save_explanation

    body = encoded(client, "tiny")
    first, second = (i for i, _, _ in expected_summary(body)[:2])
    engine = text_store[1]
    with session_scope(engine) as session:
        sae = session.scalar(select(SAERow).where(SAERow.name == "tiny"))
        assert sae is not None
        for llm, text in [("old-llm", "an older reading"), ("new-llm", "fires on <animal> words & more")]:
            save_explanation(session, sae_id=sae.id, run_id=sae.index_run_id, feature_index=first, llm=llm,
                             prompt_version="v1", status="ok", text=text, raw=text)  # fmt: skip
        save_explanation(session, sae_id=sae.id, run_id=sae.index_run_id, feature_index=second, llm="new-llm",
                         prompt_version="v1", status="failed", text=None, raw="no answer")  # fmt: skip
    pos = next(p for p, row in enumerate(body["activations"]) if first in [a["index"] for a in row[:8]])
    page = page_of(client, text=TEXT, pos=pos)
    table = re.search(r'<table class="data summary">(.*?)</table>', page, re.S)
    assert table is not None
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)  # rows[0]: the header
    assert "fires on &lt;animal&gt; words &amp; more" in rows[1]  # the latest, escaped
    assert "older reading" not in page
    assert re.search(r'<td class="wrap"></td>', rows[2])  # a failed attempt has no text to show
    panel = re.search(r'<section id="token-panel".*?</section>', page, flags=re.S).group(0)  # type: ignore[union-attr]
    assert '<span class="expl">fires on &lt;animal&gt; words &amp; more</span>' in panel
    assert island(page)["saes"][0]["explanations"] == {str(first): "fires on <animal> words & more"}
