"""
Constructor checks with one message shape, `<where>: <what is wrong>, got <value>. <fix>.`, and
the policies' registry. Plain Python: nothing here imports AllenNLP, so the policies work in the
fvcore, ignite and mmengine faces without it, and AllenNLP builds them from configs all the same
(its `from_params` calls `from_params` on any annotated class that has one).
"""
import collections.abc
import copy
import importlib
import inspect
import math
import sys
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar

WHERE = "trainer_ckpt checkpointer"


def _allennlp_error() -> Optional[type]:
    """AllenNLP's ConfigurationError, where AllenNLP is already imported (never imports it)."""
    checks = sys.modules.get("allennlp.common.checks")
    return getattr(checks, "ConfigurationError", None) if checks is not None else None


_FLAVOURS: Dict[type, type] = {}  # AllenNLP's ConfigurationError -> ours, subclassing both


class ConfigurationError(ValueError):
    """
    A configuration mistake, found at construction. Where AllenNLP is imported, each one raised is
    also an `allennlp.common.checks.ConfigurationError` (a subclass of both), so AllenNLP code and
    users catching AllenNLP's type see it as theirs; without AllenNLP it is a plain `ValueError`.
    """

    def __new__(cls, message: str, *args: Any, **kwargs: Any) -> "ConfigurationError":
        if cls is ConfigurationError:
            allennlp_error = _allennlp_error()
            if allennlp_error is not None:
                if allennlp_error not in _FLAVOURS:
                    _FLAVOURS[allennlp_error] = type(
                        "ConfigurationError", (ConfigurationError, allennlp_error), {"__module__": "trainer_ckpt"}
                    )
                cls = _FLAVOURS[allennlp_error]
        return super().__new__(cls, message)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message  # what AllenNLP's ConfigurationError carries

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Tuple[Any, ...]:
        return ConfigurationError, (self.message,)  # the flavour of the process that unpickles it


ConfigurationError.__module__ = "trainer_ckpt"  # its public name, in tracebacks and pickles


def _config_errors() -> Tuple[type, ...]:
    """Ours, and AllenNLP's where it is imported (a user's policy may raise AllenNLP's)."""
    allennlp_error = _allennlp_error()
    return (ConfigurationError,) if allennlp_error is None else (ConfigurationError, allennlp_error)


def positive_int(where: str, key: str, value: Any, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"{where}: `{key}` must be an integer >= 1, got {value!r}. {fix or 'Use a positive whole number.'}"
        )
    return value


def positive_seconds(where: str, key: str, value: Any, fix: str = "") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{where}: `{key}` must be a number of seconds > 0, got {value!r}. "
            f"{fix or 'Use a positive, finite number.'}"
        )
    return float(value)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_list(where: str, key: str, value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ConfigurationError(
            f"{where}: `{key}` must be a list of whole numbers >= 0, got {value!r}. Write e.g. [1, 5, 10]."
        )
    return sorted(set(value))


def non_negative_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{where}: `{key}` must be an integer >= 0, got {value!r}. Use a whole number.")
    return value


def flag(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{where}: `{key}` must be true or false, got {value!r}. Use a JSON boolean.")
    return value


_R = TypeVar("_R", bound="CheckedRegistrable")


class CheckedRegistrable:
    """
    A base with a registry of named subclasses: AllenNLP's `Registrable` API in plain Python.
    `@Base.register("name")` adds a subclass; `Base.by_name`, `Base.resolve_class_name`,
    `Base.list_available` and `Base.name_of` read the registry; `Base.from_params(config)` builds
    one from a type name, a `{"type": ..., <key>: <value>}` dict, or anything with `as_dict()`
    (AllenNLP's `Params`). A `type` with a dot is a fully qualified class name, used unregistered.

    Config blocks are checked before a constructor runs (their shape, the `type`, the keys against
    the constructor's parameters), each mistake with our message. Values go to the constructor as
    written, which checks them; a parameter annotated with a registrable class (or an `Optional`
    or `List` of one) gets built from its block first.
    """

    # Each base (a direct subclass of this class) -> its names -> (subclass, constructor method or None).
    _registry: Dict[type, Dict[str, Tuple[type, Optional[str]]]] = {}
    default_implementation: Optional[str] = None
    kind = ""  # "save policy", "retention policy"
    example = ""

    @classmethod
    def _base(cls) -> type:
        """The registrable base `cls` belongs to: the class in its MRO that subclasses this one directly."""
        for klass in cls.__mro__:
            if CheckedRegistrable in klass.__bases__:
                return klass
        raise TypeError(f"{cls.__name__}: not a registrable, got {cls!r}. Subclass SavePolicy or RetentionPolicy.")

    @classmethod
    def _names(cls) -> Dict[str, Tuple[type, Optional[str]]]:
        return CheckedRegistrable._registry.setdefault(cls._base(), {})

    @classmethod
    def register(
        cls, name: str, constructor: Optional[str] = None, exist_ok: bool = False
    ) -> Callable[[Type[_R]], Type[_R]]:
        """A class decorator: registers the class under `name` (built with `constructor`, a
        classmethod's name, instead of `__init__` when given)."""
        base, names = cls._base(), cls._names()
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{base.__name__}.register: the name must be a non-empty string, got {name!r}. "
                f"Write e.g. @{base.__name__}.register(\"mine\")."
            )

        def add(subclass: Type[_R]) -> Type[_R]:
            if not (isinstance(subclass, type) and issubclass(subclass, base)):
                raise ConfigurationError(
                    f"{base.__name__}.register({name!r}): only subclasses of {base.__name__} can be registered, "
                    f"got {subclass!r}. Derive the class from {base.__name__}."
                )
            taken = names.get(name)
            if taken is not None and not exist_ok and _qualname(taken[0]) != _qualname(subclass):
                # The same qualified name again (a module or notebook cell run twice) replaces it.
                raise ConfigurationError(
                    f"{base.__name__}.register: the name {name!r} is taken by {_qualname(taken[0])}, got "
                    f"{_qualname(subclass)}. Choose another name, or pass exist_ok=True to replace it."
                )
            names[name] = (subclass, constructor)
            return subclass

        return add

    @classmethod
    def is_registered(cls, name: str) -> bool:
        return name in cls._names()

    @classmethod
    def list_available(cls) -> List[str]:
        """The registered names, in registration order (the default implementation first, if any)."""
        names = list(cls._names())
        default = cls.default_implementation
        if default is not None and default in names:
            names.remove(default)
            names.insert(0, default)
        return names

    @classmethod
    def name_of(cls, subclass: type) -> Optional[str]:
        """The first name `subclass` is registered under on this base, or None."""
        return next((name for name, (c, _) in cls._names().items() if c is subclass), None)

    @classmethod
    def resolve_class_name(cls, name: str) -> Tuple[type, Optional[str]]:
        """`name` -> (the subclass, the name of its registered constructor or None)."""
        base, names = cls._base(), cls._names()
        if isinstance(name, str) and name in names:
            return names[name]
        if isinstance(name, str) and "." in name:
            module_name, _, class_name = name.rpartition(".")
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:
                raise ConfigurationError(
                    f"{base.kind}: `type` {name!r} is not registered, and as a fully qualified class name its "
                    f"module cannot be imported, got {type(e).__name__}: {e}. Check the name, and that its package "
                    "is importable (installed, or on PYTHONPATH)."
                ) from e
            subclass = getattr(module, class_name, None)
            if not (isinstance(subclass, type) and issubclass(subclass, base)):
                raise ConfigurationError(
                    f"{base.kind}: `type` {name!r} must name a subclass of {base.__name__}, got {subclass!r}. "
                    f"Check the class name in {module_name}."
                )
            return subclass, None
        raise ConfigurationError(
            f"{base.kind}: `type` must name a registered {base.kind}, got {name!r}. Use one of "
            f"{', '.join(cls.list_available())}; or register your own with @{base.__name__}.register(\"name\") "
            "and import its module, or give its fully qualified class name."
        )

    @classmethod
    def by_name(cls, name: str) -> Callable[..., Any]:
        """The class registered as `name` (or its registered constructor)."""
        subclass, constructor = cls.resolve_class_name(name)
        return subclass if constructor is None else getattr(subclass, constructor)

    @classmethod
    def from_params(cls, params: Any, **extras: Any) -> Any:
        """
        Builds the object a config block describes. `params`: a type name, a dict, or anything with
        `as_dict()` (AllenNLP's `Params`); not modified. `extras` (what AllenNLP passes down, e.g.
        `serialization_dir`) go to constructor parameters of those names that the block lacks.
        """
        base = cls._base()
        written = cls._block(params)
        block = dict(written)
        name = block.pop("type", None if cls is not base else cls.default_implementation)
        if (cls is base or name is not None) and (
            not isinstance(name, str) or (name not in cls._names() and "." not in name)
        ):
            raise ConfigurationError(
                f"{base.kind}: `type` must name a registered {base.kind}, got {name!r} in {written!r}. Use one of "
                f"{', '.join(cls.list_available())}; or register your own with @{base.__name__}.register(\"name\") "
                "and load its package (--include-package), or give its fully qualified class name."
            )
        subclass, constructor = (cls, None) if name is None else cls.resolve_class_name(name)
        if not issubclass(subclass, cls):
            raise ConfigurationError(
                f"{cls.__name__}: `type` must name a subclass of {cls.__name__}, got {name!r} ({_qualname(subclass)}). "
                f"Build it from {base.__name__} instead."
            )
        where = name or cls.name_of(cls) or cls.__name__
        init = getattr(subclass, constructor) if constructor else subclass.__init__
        parameters = _parameters(init)
        known = {p.name for p in parameters}
        arguments = {k: v for k, v in extras.items() if k in known and k not in block}
        if not _takes_kwargs(init):
            unknown = sorted(set(block) - known)
            missing = [p.name for p in parameters if p.default is p.empty and p.name not in {**block, **arguments}]
            if unknown or missing:
                what = f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing key(s) {', '.join(missing)}"
                raise ConfigurationError(
                    f"{where}: {what}, got {written!r}. Its keys are: {', '.join(sorted(known)) or 'none'}"
                    f"{' (required: ' + ', '.join(missing) + ')' if missing else ''}."
                )
        hints = _hints(init)
        for key, value in block.items():
            arguments[key] = _built(where, key, hints.get(key), value)
        return (getattr(subclass, constructor) if constructor else subclass)(**arguments)

    @classmethod
    def build(cls, where: str, key: str, value: Any) -> Any:
        """A config value (a type name, a block, or an already built object) -> the object."""
        if isinstance(value, cls):
            return value
        shown = _plain(value)
        try:
            return cls.from_params(value)
        except _config_errors() as e:
            raise ConfigurationError(f"{where}: `{key}` is not a valid {cls.kind}, got {shown!r}. {e}") from e

    @classmethod
    def _block(cls, params: Any) -> Dict[str, Any]:
        """A config value -> a dict of its own (building must not consume the caller's block)."""
        if isinstance(params, str):
            return {"type": params}
        block = _plain(params)
        if not isinstance(block, dict):
            base = cls._base()
            raise ConfigurationError(
                f"{base.kind}: must be a type name or a {{\"type\": ...}} block, got {params!r}. Write e.g. {base.example}."
            )
        return copy.deepcopy(block)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """AllenNLP's `Params` (anything with `as_dict`) -> its dict; anything else as it is."""
    as_dict = getattr(value, "as_dict", None)
    if isinstance(value, dict) or not callable(as_dict):
        return value
    try:
        return as_dict(quiet=True)
    except TypeError:
        return as_dict()


def _signature(init: Any) -> Optional[inspect.Signature]:
    """A constructor's signature without `self` (None for `object.__init__`: no parameters)."""
    if init is object.__init__:
        return None
    signature = inspect.signature(init)
    if inspect.isfunction(init):  # `Class.__init__`: drop `self` (a registered classmethod comes bound)
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    return signature


def _parameters(init: Any) -> List[inspect.Parameter]:
    """A constructor's named parameters."""
    signature = _signature(init)
    parameters = [] if signature is None else signature.parameters.values()
    return [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _takes_kwargs(init: Any) -> bool:
    signature = _signature(init)
    return signature is not None and any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())


def _hints(init: Any) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(init)
    except Exception:  # an unresolvable forward reference: no nested building, values as written
        return {}


def _registrable_in(annotation: Any) -> Tuple[Optional[type], bool]:
    """`SavePolicy`, `Optional[SavePolicy]` -> (SavePolicy, False); `List[SavePolicy]` -> (SavePolicy, True)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            return None, False
        annotation = options[0]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    many = origin in (list, tuple, collections.abc.Sequence) and len(args) >= 1
    target = args[0] if many else annotation
    if isinstance(target, type) and issubclass(target, CheckedRegistrable):
        return target, many
    return None, False


def _built(where: str, key: str, annotation: Any, value: Any) -> Any:
    target, many = _registrable_in(annotation)
    if target is None or value is None:
        return value
    if many:
        if not isinstance(value, (list, tuple)):
            return value  # the constructor says what is wrong
        return [target.build(where, f"{key}[{i}]", v) for i, v in enumerate(value)]
    return target.build(where, key, value)
