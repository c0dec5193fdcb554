import json

from scripts.explain_checkpoints import explain
from tests.conftest import trainer_at
from trainer_ckpt import DefaultCheckpointer, KeepAll


def test_explain_prints_the_rules_that_keep_each_checkpoint(tmp_path):
    config = {"trainer": {"checkpointer": {"type": "trainer_ckpt", "retention_policy": {
        "type": "any", "policies": [{"type": "most_recent_by_count", "count": 1}, {"type": "every_num_epochs", "num_epochs": 2}]}}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    writer = DefaultCheckpointer(tmp_path, retention_policy=KeepAll())  # keeps everything, so there is something to explain
    for e in range(1, 5):
        writer.save_checkpoint(trainer_at(e, 0))
    lines = explain(tmp_path)
    assert lines[0] == "(no prefix): retention any(most_recent_by_count(1), every_num_epochs(2))"
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ["e1_b0", "e2_b0", "e3_b0", "e4_b0"]
    assert rows["e1_b0"].endswith("(nothing: the next save deletes it)")
    assert rows["e2_b0"].endswith("every_num_epochs(2)")
    assert rows["e3_b0"].endswith("(nothing: the next save deletes it)")
    assert rows["e4_b0"].endswith("most_recent_by_count(1), every_num_epochs(2), newest complete checkpoint (always kept)")
    assert len(list(tmp_path.glob("model_state_*"))) == 4  # a dry run


def test_explain_says_when_the_run_does_not_use_trainer_ckpt(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"trainer": {"num_epochs": 1}}))
    assert "AllenNLP's default checkpointer" in explain(tmp_path)[0]
