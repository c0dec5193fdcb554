"""
Registers the AllenNLP face with AllenNLP whichever is imported first, without importing AllenNLP.

`import trainer_ckpt` must not pay for AllenNLP's training stack (seconds), yet
`Checkpointer.by_name("trainer_ckpt")` must work however a script orders its imports. So: when
AllenNLP is already imported, register now; otherwise an import hook (a `sys.meta_path` finder)
waits for AllenNLP's modules and registers right after each has run:

- `allennlp.training` (which defines AllenNLP's `Checkpointer`; importing any
  `allennlp.training.*` runs it first): `"trainer_ckpt"` and `"trainer_ckpt_group"` in its registry;
- `allennlp.commands`: the `allennlp checkpoints` subcommand.

The finder only wraps the loaders of those two modules and leaves every other import alone; it
removes itself once both have been seen.
"""
import importlib
import importlib.abc
import sys
import warnings
from typing import Any, Optional, Sequence, Set

# AllenNLP's module -> ours, whose import registers our names in its registries.
_REGISTRARS = {
    "allennlp.training": ("trainer_ckpt.faces.allennlp",),  # the package: its checkpointer, then its group
    "allennlp.commands": ("trainer_ckpt.cli.commands",),
}


def _register(allennlp_module: str) -> None:
    for module in _REGISTRARS[allennlp_module]:
        if getattr(getattr(sys.modules.get(module), "__spec__", None), "_initializing", False):
            continue  # being imported (it is what imports AllenNLP): it registers itself when it has run
        already = module in sys.modules
        imported = importlib.import_module(module)
        if module == "trainer_ckpt.cli.commands" and already:
            # Imported before AllenNLP's commands were, it skipped the subcommand then.
            imported._register_allennlp_subcommand()


def _register_after_import(allennlp_module: str) -> None:
    try:
        _register(allennlp_module)
    except Exception as e:  # never break the user's `import allennlp...` for our sake
        warnings.warn(
            f"trainer_ckpt: registering with {allennlp_module} failed, got {type(e).__name__}: {e}. "
            f"AllenNLP works, without trainer_ckpt's names; import {' and '.join(_REGISTRARS[allennlp_module])} "
            "to see the whole error.",
            RuntimeWarning,
            stacklevel=2,
        )


class _Loader(importlib.abc.Loader):
    """AllenNLP's own loader for the module, plus our registration once the module has run."""

    def __init__(self, loader: Any, finder: "_Finder", name: str) -> None:
        self._loader, self._finder, self._name = loader, finder, name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # The module sees its real loader (importlib.resources, pkgutil and reloads read it).
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        if sys.modules.get(self._name) is module:  # an import, not a look-alike copy (module_from_spec)
            self._finder.seen(self._name)
            _register_after_import(self._name)

    def __getattr__(self, name: str) -> Any:  # is_package, get_code, get_resource_reader...
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    trainer_ckpt_hook = True  # how install() recognizes one put there by an earlier import of the package

    def __init__(self, names: Set[str]) -> None:
        self.pending = set(names)

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if fullname not in self.pending:
            return None
        for finder in list(sys.meta_path):
            if finder is self or getattr(finder, "trainer_ckpt_hook", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, self, fullname)
                return spec
        return None

    def seen(self, name: str) -> None:
        self.pending.discard(name)
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Registers with the AllenNLP modules already imported; hooks the others' import."""
    waiting = set()
    for name in _REGISTRARS:
        if sys.modules.get(name) is not None:
            _register(name)
        else:
            waiting.add(name)
    for finder in sys.meta_path:
        if getattr(finder, "trainer_ckpt_hook", False):
            finder.pending = waiting  # the package was imported again (a plugin reload): one hook
            if not waiting:
                sys.meta_path.remove(finder)
            return
    if waiting:
        sys.meta_path.insert(0, _Finder(waiting))
