from pathlib import Path

import pytest

from pipeline.source_closure import import_closure

FILES = {
    "pipeline/__init__.py": "",
    "pipeline/errors.py": "import os\n",
    "pipeline/unused.py": "",
    "pipeline/typing_only.py": "",
    "pipeline/lazy.py": "",
    "pipeline/models/__init__.py": "from .resnet import ResNet\n",
    "pipeline/models/resnet.py": "from ..errors import FacekdError\nclass ResNet: ...\n",
    "pipeline/models/unused.py": "",
    "stages/__init__.py": "",
    "stages/train.py": (
        "from typing import TYPE_CHECKING\n"
        "import numpy as np\n"
        "from pipeline.models import ResNet\n"
        "if TYPE_CHECKING:\n"
        "    from pipeline import typing_only\n"
        "else:\n"
        "    import pipeline.errors\n"
        "def run():\n"
        "    from pipeline import lazy\n"
    ),
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_closure_follows_lazy_relative_and_package_imports_but_not_type_checking(root: Path) -> None:
    closure = [path.relative_to(root).as_posix() for path in import_closure("stages.train", root)]
    assert closure == [
        "pipeline/__init__.py", "pipeline/errors.py", "pipeline/lazy.py", "pipeline/models/__init__.py",
        "pipeline/models/resnet.py", "stages/__init__.py", "stages/train.py",
    ]


def test_a_module_outside_the_project_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="numpy"):
        import_closure("numpy", root)
