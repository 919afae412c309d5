"""`credit bench` runs on the tiny model and reports every phase and every CREDIT/SDPO ratio.
No timing assertions: the numbers depend on the machine."""

from __future__ import annotations

import json
import statistics

from credit.analysis.bench import PHASES
from credit.cli import main


def test_bench_reports_every_phase_and_ratio(tmp_path, tiny_tokenizer):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", "tiny", "-B", "3", "-G", "3", "--prompt-len", "4", "--response-len", "4",
               "--ks", "1,2", "--top-k", "8", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    labels = ["grpo", "sdpo-token", "sdpo-logit", "credit-token-k1", "credit-logit-k1", "credit-token-k2", "credit-logit-k2"]
    assert list(result["methods"]) == labels
    for label, m in result["methods"].items():
        assert set(m["seconds"]) == set(PHASES), label
        assert all(v >= 0 for v in m["seconds"].values()), label
        assert m["tokens_per_s"]["step"] > 0 and m["peak_mem_gib"] > 0
        assert m["seconds"]["step"] >= m["seconds"]["rollout"]
    assert result["methods"]["grpo"]["seconds"]["teacher"] == 0.0
    for label in labels[1:]:  # every distillation method scores its teacher; CREDIT also its negatives
        assert result["methods"][label]["seconds"]["teacher"] > 0, label
        assert (result["methods"][label]["seconds"]["negatives"] > 0) == label.startswith("credit"), label
    assert set(result["ratios"]) == {f"credit-{mode}-k{k}/sdpo-{mode}" for mode in ("token", "logit") for k in (1, 2)}
    assert all(r["step"] > 0 and r["learner"] > 0 for r in result["ratios"].values())
    for name, r in result["ratios"].items():  # the floor 1 + K·t_teacher/t_step(SDPO), from the same repeats
        k = int(name.split("/")[0].rsplit("-k", 1)[1])
        sdpo = result["methods"][name.split("/")[1]]["seconds_all"]
        assert r["floor"] == statistics.median(1 + k * t / s for t, s in zip(sdpo["teacher"], sdpo["step"]))


def test_the_synthetic_task_is_not_a_user_task():
    import credit.analysis.bench  # noqa: F401  (importing the bench must not register anything)
    from credit.tasks import TASKS

    assert "bench-synthetic" not in TASKS and not any("credit.analysis.bench" in path for path in TASKS.values())


def test_bench_rejects_zero_repeats(capsys):
    assert main(["bench", "--repeats", "0"]) == 2
    err = capsys.readouterr().err
    assert "--repeats=0" in err and "Traceback" not in err
