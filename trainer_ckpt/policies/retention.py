"""
Retention policies: *what to keep*. Each returns a keep-mask over the complete checkpoints on
disk, oldest first, computed from data alone (the records on disk: progress, save time, metrics,
size); the checkpointer passes `now` in and does the deleting. Whatever a policy says, the
checkpointer keeps the newest complete checkpoint.
"""
import re
from typing import List, Sequence, Tuple, Union

from trainer_ckpt.policies.registry import CheckedRegistrable, ConfigurationError
from trainer_ckpt.policies.registry import finite, flag, positive_int, positive_seconds
from trainer_ckpt.checkpoint_info import CheckpointInfo


class RetentionPolicy(CheckedRegistrable):
    """
    Decides which checkpoints stay on disk. Subclass it, implement `should_keep`, and
    `@RetentionPolicy.register("name")` it.

    `should_keep(checkpoints, now)` gets the complete checkpoints, oldest first, and returns one
    bool per checkpoint. `describe()` names the rule in explanations and deletion logs.
    """

    kind = "retention policy"
    example = '{"type": "most_recent_by_count", "count": 2}'

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        raise NotImplementedError

    def describe(self) -> str:
        """The rule as users wrote it, e.g. `most_recent_by_count(3)`."""
        return RetentionPolicy.name_of(type(self)) or type(self).__name__

    def explain(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[List[str]]:
        """For each checkpoint, the rules that keep it (empty: none does)."""
        return [[self.describe()] if kept else [] for kept in self.should_keep(checkpoints, now)]


def _described(name: str, *args) -> str:
    return f"{name}({', '.join(str(a) for a in args)})"


@RetentionPolicy.register("all")
class KeepAll(RetentionPolicy):
    """Keeps every checkpoint."""

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [True] * len(checkpoints)


@RetentionPolicy.register("most_recent_by_count")
class KeepMostRecentByCount(RetentionPolicy):
    """
    Keeps the `count` newest checkpoints (AllenNLP's `keep_most_recent_by_count`).

    # Parameters

    count : `int`
        How many to keep, >= 1.
    """

    def __init__(self, count: int) -> None:
        self.count = positive_int(
            "most_recent_by_count",
            "count",
            count,
            'The newest checkpoint is always kept; use null (or the "all" policy) to keep all.',
        )

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        first_kept = max(0, len(checkpoints) - self.count)
        return [i >= first_kept for i in range(len(checkpoints))]

    def describe(self) -> str:
        return _described("most_recent_by_count", self.count)


@RetentionPolicy.register("most_recent_by_age")
class KeepMostRecentByAge(RetentionPolicy):
    """
    Keeps checkpoints saved at most `seconds` ago (AllenNLP's `keep_most_recent_by_age`).

    # Parameters

    seconds : `float`
        Maximum age in seconds, > 0.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = positive_seconds("most_recent_by_age", "seconds", seconds)

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [now - c.time <= self.seconds for c in checkpoints]

    def describe(self) -> str:
        return _described("most_recent_by_age", f"{self.seconds:g}s")


@RetentionPolicy.register("one_per_time_window")
class KeepOnePerTimeWindow(RetentionPolicy):
    """
    Keeps checkpoints permanently, one per window of `seconds` (AllenNLP 2.4's
    `keep_serialized_model_every_num_seconds`): the first window starts when the run started, and
    a checkpoint saved more than `seconds` after the last one kept this way (or the start) is kept.
    The start is recorded with every checkpoint, so a restart or `--recover` keeps the same
    checkpoints as an uninterrupted run; for checkpoints without that record (AllenNLP's files)
    the oldest one opens the first window. Deleting checkpoints this policy does not keep never
    changes what it keeps later.

    # Parameters

    seconds : `float`
        Minimum distance in seconds between permanently kept checkpoints, > 0.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = positive_seconds("one_per_time_window", "seconds", seconds)

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        keep = []
        last_kept = next((c.run_start for c in checkpoints if c.run_start is not None), None)
        for c in checkpoints:
            k = last_kept is None or c.time - last_kept > self.seconds
            if k:
                last_kept = c.time
            keep.append(k)
        return keep

    def describe(self) -> str:
        return _described("one_per_time_window", f"{self.seconds:g}s")


@RetentionPolicy.register("every_num_epochs")
class KeepEveryNumEpochs(RetentionPolicy):
    """
    Keeps, permanently, the checkpoints at the end of every `num_epochs`-th epoch.

    # Parameters

    num_epochs : `int`
        >= 1.
    """

    def __init__(self, num_epochs: int) -> None:
        self.num_epochs = positive_int("every_num_epochs", "num_epochs", num_epochs)

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [c.end_of_epoch and c.epochs_completed % self.num_epochs == 0 for c in checkpoints]

    def describe(self) -> str:
        return _described("every_num_epochs", self.num_epochs)


@RetentionPolicy.register("every_num_batches")
class KeepEveryNumBatches(RetentionPolicy):
    """
    Keeps, permanently, the checkpoints taken after batches N, 2N, 3N... of the run (counted over
    the whole run). Checkpoints whose record does not say (AllenNLP's files) are not kept by it.

    # Parameters

    num_batches : `int`
        >= 1.
    """

    def __init__(self, num_batches: int) -> None:
        self.num_batches = positive_int("every_num_batches", "num_batches", num_batches)

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [
            c.total_batches_completed is not None and c.total_batches_completed % self.num_batches == 0
            for c in checkpoints
        ]

    def describe(self) -> str:
        return _described("every_num_batches", self.num_batches)


# Metric names whose direction is clear (after mmengine's greater/less key lists), matched against
# the words of a name: a word equal to a key, or starting with it (`acc` matches `accuracy3`).
_GREATER = ("acc", "f1", "fscore", "precision", "recall", "auc", "map", "bleu", "rouge", "iou",
            "miou", "dice", "top1", "top5", "em", "exact", "correlation", "spearman", "pearson")
_LESS = ("loss", "error", "err", "perplexity", "ppl", "wer", "cer", "mse", "mae", "rmse", "distance")


def metric_direction(where: str, metric: str) -> Tuple[str, float]:
    """`"+accuracy"` -> `("accuracy", 1.0)`; `"-loss"` -> `("loss", -1.0)`; no sign: inferred."""
    if not isinstance(metric, str) or not metric.strip("+-"):
        raise ConfigurationError(
            f"{where}: a metric must be a name such as \"+accuracy\" or \"-loss\", got {metric!r}. "
            "Use the name the model reports, with + where higher is better and - where lower is."
        )
    if metric[0] in "+-":
        return metric[1:], 1.0 if metric[0] == "+" else -1.0
    words = [w for w in re.split(r"[^a-z0-9]+", metric.lower()) if w]
    greater = any(w == k or (len(k) > 2 and w.startswith(k)) for w in words for k in _GREATER)
    less = any(w == k or (len(k) > 2 and w.startswith(k)) for w in words for k in _LESS)
    if greater == less:
        raise ConfigurationError(
            f"{where}: cannot tell whether higher or lower is better for metric {metric!r}, got no sign. "
            f"Write \"+{metric}\" if higher is better, \"-{metric}\" if lower is."
        )
    return metric, 1.0 if greater else -1.0


@RetentionPolicy.register("best")
class KeepBest(RetentionPolicy):
    """
    Keeps the `count` best checkpoints by a validation metric recorded with each checkpoint
    (ignite's `score_function` + `n_saved`, mmengine's `save_best`). AllenNLP's sign convention:
    `"+accuracy"` higher is better, `"-loss"` lower is; without a sign the direction is inferred
    from the name (`acc`, `f1`, `map`... higher; `loss`, `error`, `perplexity`... lower). With
    several metrics, each keeps its own best `count`. A checkpoint without the metric (saved
    inside an epoch, before validation) or with a NaN or infinite value is never among the best.

    # Parameters

    metric : `Union[str, List[str]]`
        One metric or several, e.g. `"+accuracy"` or `["+accuracy", "-loss"]`.
    count : `int`, optional (default=`1`)
        How many best checkpoints to keep per metric, >= 1.
    greater_or_equal : `bool`, optional (default=`False`)
        On a tie, prefer the newer checkpoint (by default the older one stays best, as in
        AllenNLP's metric tracker).
    """

    def __init__(self, metric: Union[str, List[str]], count: int = 1, greater_or_equal: bool = False) -> None:
        names = [metric] if isinstance(metric, str) else metric
        if not isinstance(names, list) or not names:
            raise ConfigurationError(
                f"best: `metric` must be a metric name or a non-empty list of them, got {metric!r}. "
                'Write e.g. "+accuracy".'
            )
        self.metrics = [metric_direction("best", m) for m in names]
        self.count = positive_int("best", "count", count)
        self.greater_or_equal = flag("best", "greater_or_equal", greater_or_equal)

    def _best(self, checkpoints: Sequence[CheckpointInfo], name: str, sign: float) -> List[bool]:
        scored = [
            (sign * c.metrics[name], i) for i, c in enumerate(checkpoints) if finite(c.metrics.get(name))
        ]
        tie = -1 if self.greater_or_equal else 1  # which of two equal scores ranks first
        scored.sort(key=lambda si: (-si[0], tie * si[1]))
        best = {i for _, i in scored[: self.count]}
        return [i in best for i in range(len(checkpoints))]

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [any(column) for column in zip(*self.explain_masks(checkpoints))] if checkpoints else []

    def explain_masks(self, checkpoints: Sequence[CheckpointInfo]) -> List[List[bool]]:
        return [self._best(checkpoints, name, sign) for name, sign in self.metrics]

    def explain(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[List[str]]:
        reasons: List[List[str]] = [[] for _ in checkpoints]
        for (name, sign), mask in zip(self.metrics, self.explain_masks(checkpoints)):
            label = _described("best", ("+" if sign > 0 else "-") + name + self._count_suffix())
            for reason, kept in zip(reasons, mask):
                if kept:
                    reason.append(label)
        return reasons

    def describe(self) -> str:
        signs = ", ".join(("+" if s > 0 else "-") + n for n, s in self.metrics)
        return _described("best", signs + self._count_suffix())

    def _count_suffix(self) -> str:
        return f", count={self.count}" if self.count > 1 else ""


@RetentionPolicy.register("disk_quota")
class KeepWithinDiskQuota(RetentionPolicy):
    """
    Keeps checkpoints, newest first, while their total size stays within `max_total_bytes`; the
    oldest go first. The newest checkpoint and the best one (the trainer's best so far, the one
    `best.th` was linked to) are always kept and count against the quota. Meant to cap other rules:
    `{"type": "all_of", "policies": [<what you want kept>, {"type": "disk_quota", ...}]}`.

    # Parameters

    max_total_bytes : `int`
        >= 1.
    """

    def __init__(self, max_total_bytes: int) -> None:
        self.max_total_bytes = positive_int(
            "disk_quota", "max_total_bytes", max_total_bytes, "Give the budget in bytes, e.g. 10000000000 for 10 GB."
        )

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        keep = [False] * len(checkpoints)
        best = [i for i, c in enumerate(checkpoints) if c.is_best_so_far]
        protected = {len(checkpoints) - 1, *best[-1:]} if checkpoints else set()
        used = sum(checkpoints[i].size_bytes for i in protected)
        for i in protected:
            keep[i] = True
        for i in reversed(range(len(checkpoints))):
            if i not in protected and used + checkpoints[i].size_bytes <= self.max_total_bytes:
                used += checkpoints[i].size_bytes
                keep[i] = True
            elif i not in protected:
                break  # the oldest go first: once one does not fit, neither do older ones
        return keep

    def describe(self) -> str:
        return _described("disk_quota", self.max_total_bytes)


class _Combination(RetentionPolicy):
    name = ""

    def __init__(self, policies: List[RetentionPolicy]) -> None:
        if not isinstance(policies, (list, tuple)) or not policies:
            raise ConfigurationError(
                f"{self.name}: `policies` must list at least one retention policy, got {policies!r}. "
                'Add one, e.g. [{"type": "most_recent_by_count", "count": 2}], or use "all".'
            )
        self.policies = [RetentionPolicy.build(self.name, f"policies[{i}]", p) for i, p in enumerate(policies)]

    def describe(self) -> str:
        return _described(self.name, *(p.describe() for p in self.policies))


@RetentionPolicy.register("any")
class KeepAny(_Combination):
    """
    Keeps a checkpoint when any of `policies` keeps it (the union).

    # Parameters

    policies : `List[RetentionPolicy]`
        At least one policy.
    """

    name = "any"

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        return [bool(r) for r in self.explain(checkpoints, now)]

    def explain(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[List[str]]:
        reasons: List[List[str]] = [[] for _ in checkpoints]
        for policy in self.policies:
            for mine, theirs in zip(reasons, policy.explain(checkpoints, now)):
                mine.extend(theirs)
        return reasons


@RetentionPolicy.register("all_of")
class KeepAllOf(_Combination):
    """
    Keeps a checkpoint when every one of `policies` keeps it (the intersection), e.g. "the 10
    newest, within 50 GB".

    # Parameters

    policies : `List[RetentionPolicy]`
        At least one policy.
    """

    name = "all_of"

    def should_keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> List[bool]:
        masks = [p.should_keep(checkpoints, now) for p in self.policies]
        return [all(mask[i] for mask in masks) for i in range(len(checkpoints))]


# Named (in messages, `describe()`, pickles) by their 0.1 path, `trainer_ckpt.retention_policies`, which re-exports them.
for _policy in list(globals().values()):
    if isinstance(_policy, type) and issubclass(_policy, RetentionPolicy) and _policy.__module__ == __name__:
        _policy.__module__ = "trainer_ckpt.retention_policies"
