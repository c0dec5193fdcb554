"""Constructor checks with one message shape: `<where>: <what is wrong>, got <value>. <fix>.`"""
import math
from typing import Any

from allennlp.common.checks import ConfigurationError


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
