"""Constructor checks with one message shape: `<where>: <what is wrong>, got <value>. <fix>.`"""
import math
from typing import Any

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
