"""The model folder ships to the Hub as remote code (``save_pretrained`` copies its files and their relative
imports): nothing in it may import the rest of the package, or the shipped model would not load elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import giga_ssl_hf.models.gigassl as gigassl

MODEL_FOLDER = Path(gigassl.__file__).parent


def package_imports(path: Path) -> list[str]:
    """``file:line: import`` for each import of ``giga_ssl_hf`` (absolute) or relative one leaving the folder."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "giga_ssl_hf" or name.startswith(".."):
                found.append(f"{path.name}:{node.lineno}: {name}")
    return found


def test_no_file_of_the_model_folder_imports_the_package():
    files = sorted(MODEL_FOLDER.glob("*.py"))
    assert {"configuration_gigassl.py", "modeling_gigassl.py", "convert_gigassl_original_to_hf.py"} <= {
        path.name for path in files
    }
    assert [found for path in files for found in package_imports(path)] == []


def test_the_check_sees_absolute_and_escaping_imports(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text(
        "import giga_ssl_hf.files\nfrom giga_ssl_hf.weight_files import safe_torch_load\n"
        "from ...contracts import X\nfrom .modeling_gigassl import GigaSSLModel\nimport torch\n"
    )
    assert package_imports(source) == [
        "bad.py:1: giga_ssl_hf.files",
        "bad.py:2: giga_ssl_hf.weight_files",
        "bad.py:3: ...contracts",
    ]
