"""
The crash-injection harness (scripts/crash_test.py), short: children saving in a loop are
SIGKILLed at random times and right around their renames and deletions; a fresh checkpointer must
restore the newest completed checkpoint with the contents its name promises, every time.
"""
from scripts.crash_test import MODES, run_trials


def test_sigkill_at_random_moments_never_loses_the_newest_complete_checkpoint():
    result = run_trials(trials=12, size_mb=4, which="ours", seed=1)
    assert set(result["modes"]) == set(MODES)  # every kind of moment was tried
    assert result["bad"] == 0, result


def test_the_same_with_background_saves():
    result = run_trials(trials=8, size_mb=4, which="ours_background", seed=2)
    assert result["bad"] == 0, result


def test_a_plain_loop_through_the_fvcore_face():
    result = run_trials(trials=12, size_mb=4, which="fvcore_face", seed=3)
    assert set(result["modes"]) == set(MODES)
    assert result["bad"] == 0, result
