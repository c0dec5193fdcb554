"""Constructor checks with one message shape: `<where>: <what is wrong>, got <value>. <fix>.`"""
import copy
import inspect
import math
from typing import Any, List, Union

from allennlp.common import Params, Registrable
from allennlp.common.checks import ConfigurationError

WHERE = "trainer_ckpt checkpointer"


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


class Raw:
    """
    First member of a parameter's `Union` annotation: `from_params` then hands the config value
    through as written, so that the constructor's own check reports a wrong type in our format
    (AllenNLP's own would be a bare `TypeError: Expected count to be a int.`).
    """


Int = Union[Raw, int]
Float = Union[Raw, float]
Bool = Union[Raw, bool]
IntList = Union[Raw, List[int]]


def _takes_raw(init: Any) -> bool:
    """Whether every argument of `init` is annotated `Union[Raw, ...]` (or it takes none)."""
    if init is object.__init__:
        return True
    parameters = list(inspect.signature(init).parameters.values())[1:]
    return all(p.kind == p.POSITIONAL_OR_KEYWORD and Raw in getattr(p.annotation, "__args__", ()) for p in parameters)


class CheckedRegistrable(Registrable):
    """
    A registrable base whose config blocks are checked before AllenNLP builds them: the block's
    shape, its `type`, and its keys against the constructor, each with our message.
    """

    kind = ""  # "save policy", "retention policy"
    example = ""

    @classmethod
    def from_params(cls, params: Any, constructor_to_call=None, constructor_to_inspect=None, **extras):
        if CheckedRegistrable in cls.__bases__:  # the registrable base itself, not a subclass
            params = cls._checked(params)
            block = copy.deepcopy(params.as_dict(quiet=True))
            subclass, constructor = cls.resolve_class_name(block.pop("type"))
            if constructor is None and _takes_raw(subclass.__init__):
                # Every argument is handed through as written (`Raw`) and checked by the
                # constructor: call it directly. AllenNLP's own path would import its whole model
                # stack (seconds) on the first argument it builds.
                return subclass(**block)
        return super().from_params(params, constructor_to_call, constructor_to_inspect, **extras)

    @classmethod
    def build(cls, where: str, key: str, value: Any) -> Any:
        """A config value (a type name, a block, or an already built object) -> the object."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Params):
            value = value.as_dict(quiet=True)
        try:
            return cls.from_params(copy.deepcopy(value))  # building pops keys off the block
        except ConfigurationError as e:
            raise ConfigurationError(f"{where}: `{key}` is not a valid {cls.kind}, got {value!r}. {e}") from e

    @classmethod
    def _checked(cls, params: Any) -> Params:
        if isinstance(params, str):
            params = Params({"type": params})
        elif isinstance(params, dict):
            params = Params(params)
        if not isinstance(params, Params):
            raise ConfigurationError(
                f"{cls.kind}: must be a type name or a {{\"type\": ...}} block, got {params!r}. Write e.g. {cls.example}."
            )
        block = params.as_dict(quiet=True)
        name = block.get("type")
        choices = ", ".join(cls.list_available())
        if not isinstance(name, str) or (name not in cls.list_available() and "." not in name):
            raise ConfigurationError(
                f"{cls.kind}: `type` must name a registered {cls.kind}, got {name!r} in {block!r}. Use one of "
                f"{choices}; or register your own with @{cls.__name__}.register(\"name\") and load its package "
                "(--include-package), or give its fully qualified class name."
            )
        subclass, constructor = cls.resolve_class_name(name)
        init = getattr(subclass, constructor) if constructor else subclass.__init__
        signature = inspect.signature(init if init is not object.__init__ else lambda self: None)
        parameters = [p for p in list(signature.parameters.values())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        known = {p.name for p in parameters}
        unknown = sorted(set(block) - known - {"type"})
        missing = [p.name for p in parameters if p.default is p.empty and p.name not in block]
        if (unknown or missing) and not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            what = f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing key(s) {', '.join(missing)}"
            raise ConfigurationError(
                f"{name}: {what}, got {block!r}. Its keys are: {', '.join(sorted(known)) or 'none'}"
                f"{' (required: ' + ', '.join(missing) + ')' if missing else ''}."
            )
        return params
