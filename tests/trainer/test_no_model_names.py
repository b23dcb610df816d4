"""No model name outside its own module and the registry: trainer/*.py (not cli/, not models/) asks a
model class what it needs (``uses_sg2m``, ``score_kind``, ...) instead of comparing names."""
import ast
import re
from pathlib import Path

import pytest

from trainer.models import list_models

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
# registered names, plus spellings of the pooling baselines used in prose
NAMES = sorted(set(list_models()) | {"mean-pool", "max-pool"})
# names that are also ordinary words / dict keys ("mean", "max"): flagged only where compared with a model
GENERIC = {n for n in NAMES if re.fullmatch(r"[a-z]+", n) and not n.endswith("mil")}


def _word(name: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")


def _strings(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def model_names_in(source: str) -> list[str]:
    """``"<line>: <name>"`` for every model name in a string literal of ``source`` (generic names: only
    in a comparison with an expression that mentions ``model``)."""
    tree = ast.parse(source)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            hits += [f"{node.lineno}: {n}" for n in NAMES if n not in GENERIC and _word(n).search(node.value)]
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any("model" in ast.unparse(s) for s in sides):
                hits += [f"{node.lineno}: {v}" for s in sides for v in _strings(s) if v in GENERIC]
    return sorted(set(hits))


def test_scanner_catches_name_branches():
    assert model_names_in('if cfg.model == "sam-mil" and cfg.mask == "sam":\n    pass\n') == ["1: sam-mil"]
    assert model_names_in('k = "attention" if ens.cfg.model not in ("mean", "max") else "x"\n') == \
        ["1: max", "1: mean"]
    assert model_names_in('backbone: str = "abmil"\n') == ["1: abmil"]
    assert model_names_in('d = {"mean": 1, "std": 2}\nif v["mean"] > 0:\n    pass\n') == []


@pytest.mark.parametrize("path", sorted(TRAINER.glob("*.py")), ids=lambda p: p.name)
def test_no_model_name_in_trainer_modules(path):
    assert model_names_in(path.read_text()) == [], f"{path.name}: ask the model class, not its name"
