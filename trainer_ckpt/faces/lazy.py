"""Faces imported on first use: AllenNLP's `--include-package trainer_ckpt` imports every
submodule of the package, which must work where the peers (fvcore, ignite, mmengine) are not installed."""
import importlib
from typing import Any, Callable, List, Sequence, Tuple


def lazy_face(face: str, names: Sequence[str]) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """A module's `__getattr__` and `__dir__` that import the face's module (`trainer_ckpt.faces.<face>`) when asked for a name."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # `__path__`, `__file__`...: asked of every module, without the face
            raise AttributeError(name)
        return getattr(importlib.import_module(f"trainer_ckpt.faces.{face}"), name)

    def __dir__() -> List[str]:
        return sorted(names)

    return __getattr__, __dir__
