"""The house itself: no import cycles anywhere, and the command line and web assembly stay light.

The layering (trainer never imports app; app's domains in layers) is import-linter's contracts in
pyproject.toml, run by CI as `lint-imports`; these are the checks it does not make.
"""

from __future__ import annotations

import subprocess
import sys

import grimp


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("app", "trainer", exclude_type_checking_imports=True)
    cycles = sorted(
        {
            tuple(sorted((module, imported)))
            for module in graph.modules
            for imported in graph.find_modules_directly_imported_by(module)
            if graph.chain_exists(importer=imported, imported=module)
        }
    )
    assert len(graph.modules) > 100
    assert cycles == []


def test_the_command_line_and_the_server_assembly_import_no_torch_and_no_database() -> None:
    code = (
        "import sys, app.cli, app.server\n"
        "print(','.join(sorted(m for m in ('torch', 'transformers', 'sqlalchemy') if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
