"""A wheel of jumpscope works without the source checkout.

The wheel carries templates/, static/ and migrations/ as data files (PREFIX/share/jumpscope);
`app.core.assets` finds them there. The end-to-end test builds the real wheel, installs it into a new
virtual environment (dependencies borrowed from the test environment, jumpscope itself only from
the wheel), migrates a database and serves a page from outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from app.core.assets import ASSETS, SHARE, asset_dir

ROOT = Path(__file__).resolve().parents[2]


def source_files(name: str) -> set[str]:
    """The asset files of the checkout, relative to their folder."""
    folder = ROOT / name
    return {
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_the_checkout_is_found_first(tmp_path: Path) -> None:
    for name in ASSETS:
        assert asset_dir(name) == ROOT / name
    installed = tmp_path / SHARE / "templates"
    installed.mkdir(parents=True)
    assert asset_dir("templates", source_root=ROOT, search=[tmp_path]) == ROOT / "templates"


def test_an_installed_copy_is_found_without_a_checkout(tmp_path: Path) -> None:
    no_checkout = tmp_path / "site-packages"
    no_checkout.mkdir()
    user, env = tmp_path / "user", tmp_path / "env"
    (user / SHARE / "static").mkdir(parents=True)
    assert asset_dir("static", source_root=no_checkout, search=[env, user]) == user / SHARE / "static"
    (env / SHARE / "static").mkdir(parents=True)
    assert asset_dir("static", source_root=no_checkout, search=[env, user]) == env / SHARE / "static"


def test_a_missing_folder_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"migrations/ folder is missing .*reinstall"):
        asset_dir("migrations", source_root=tmp_path, search=[tmp_path / "prefix"])
    with pytest.raises(ValueError, match="unknown asset folder 'docs'"):
        asset_dir("docs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
    )
    [built] = out.glob("jumpscope-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_carries_every_asset_file(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    [data] = {name.split("/", 1)[0] for name in names if ".data/" in name}
    for asset in ASSETS:
        prefix = f"{data}/data/{SHARE.as_posix()}/{asset}/"
        shipped = {name.removeprefix(prefix) for name in names if name.startswith(prefix)}
        assert shipped == source_files(asset), asset


@pytest.mark.slow
def test_an_installed_wheel_migrates_and_serves_pages_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies come from the test environment (a plain path entry: its .pth files, among
    # them the editable install's finder, are not run); jumpscope itself only from the wheel.
    (site_packages / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        timeout=300,
    )
    script = textwrap.dedent(
        """
        import app, app.core.assets
        from fastapi.testclient import TestClient
        from app.core.database import upgrade
        from app.server import create_app
        from app.core.settings import Settings

        print("package", app.__file__)
        for name in app.core.assets.ASSETS:
            print(name, app.core.assets.asset_dir(name))
        url = "sqlite:///" + "DB"
        upgrade(url)
        client = TestClient(create_app(Settings(database_url=url)))
        page = client.get("/compare")
        print("compare", page.status_code, "<nav" in page.text)
        print("css", client.get("/static/style.css").status_code)
        """
    ).replace("DB", str(tmp_path / "store.db"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run(
        [str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines["package"].startswith(str(site_packages)), "jumpscope was imported from the checkout"
    for name in ASSETS:
        assert lines[name] == str(venv / SHARE / name)
    assert lines["compare"] == "200 True"
    assert lines["css"] == "200"
