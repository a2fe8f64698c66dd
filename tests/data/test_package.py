"""nctune.data as a package: its public names, its floor, and independent source modules."""

from __future__ import annotations

import ast
from pathlib import Path

import nctune.data
from tests import fresh_imports

SOURCES_DIR = Path(nctune.data.__file__).parent / "sources"


def test_public_names():
    assert sorted(nctune.data.__all__) == sorted(
        [
            "DEBIAN_FASHION_MNIST",
            "FASHION_MNIST_CLASSES",
            "IMG_EXTENSIONS",
            "SOURCES",
            "DataSplits",
            "FileImageDataset",
            "ImageDataset",
            "InputConfigLike",
            "ManifestRow",
            "TensorImageDataset",
            "build_data",
            "eval_transform",
            "list_images",
            "list_sources",
            "make_loader",
            "open_image",
            "read_manifest",
            "resolve_input_config",
            "subsample",
        ]
    )
    for name in nctune.data.__all__:
        assert getattr(nctune.data, name) is not None, name


@fresh_imports.group
def test_data_does_not_import_config_at_run_time():
    # config sits above data (it validates data.source against the registry)
    assert fresh_imports.probe()["data"] == []


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_each_source_module_is_independent_of_the_others():
    modules = sorted(p for p in SOURCES_DIR.glob("*.py") if not p.name.startswith("_"))
    names = {f"nctune.data.sources.{p.stem}" for p in modules}
    assert len(names) == 7  # csv, digits, fashion_mnist, hf, imagefolder, torchvision, webdataset
    for path in modules:
        own = f"nctune.data.sources.{path.stem}"
        others = imported_modules(path) & (names - {own})
        assert not others, f"{path.name} imports {sorted(others)}"
