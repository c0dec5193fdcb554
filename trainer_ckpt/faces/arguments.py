"""
The checks every face makes of the keywords it adds to its framework's (`background`,
`restore_rng`, the policies), with one wording: `<where>: <what is wrong>, got <value>. <fix>.`
"""
from typing import Any

_EXAMPLES = {"SavePolicy": "SaveEveryNumSeconds(600)", "RetentionPolicy": "KeepMostRecentByCount(3)"}


def require_bools(where: str, **values: Any) -> None:
    """Raises ValueError for the first of `values` that is not True or False."""
    for key, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"{where}: `{key}` must be True or False, got {value!r}. Pass a bool.")


def require_policy(where: str, key: str, value: Any, kind: str) -> None:
    """Raises TypeError when `value` is neither None nor a `kind` ("SavePolicy", "RetentionPolicy")."""
    if value is None:
        return
    from trainer_ckpt.policies.retention import RetentionPolicy
    from trainer_ckpt.policies.save import SavePolicy

    if not isinstance(value, {"SavePolicy": SavePolicy, "RetentionPolicy": RetentionPolicy}[kind]):
        raise TypeError(f"{where}: `{key}` must be a {kind}, got {value!r}. Use e.g. {_EXAMPLES[kind]}.")
