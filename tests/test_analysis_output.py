"""Analysis output a new user can read (issue 27, item 8): report groups follow the method (or the
study cell) and name what differs; held-out before/after are points, not a line; pmi names items and
prints n/a; the explain PNG centres G and has a legend; a missing relative path says where it was looked for."""

import json

import pytest
import yaml

from credit.analysis import explain as ex
from credit.analysis import pmi
from credit.analysis import report as rp


def make_run(path, config, evals=(0, 6), steps=6):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    with (path / "metrics.jsonl").open("w") as f:
        for s in range(steps + 1):
            row = {"step": s, "task/reward_mean": 0.1 * s}
            if s in evals:
                row["eval/mean@4"] = 0.2 + 0.1 * s
            f.write(json.dumps(row) + "\n")
    return path


def test_groups_follow_the_method_and_cells_and_labels_name_every_difference(tmp_path):
    cells = {"grpo": {"method": "grpo", "credit": {"grpo_weight": 0.0}},
             "credit-blend": {"method": "credit", "credit": {"lam": 0.5, "num_negatives": 1, "swap": "context",
                                                             "grpo_weight": 0.9}}}
    dirs = []
    for cell, config in cells.items():
        for seed in (0, 1, 2):
            c = {**config, "seed": seed, "out_dir": f"runs/{cell}/seed{seed}"}
            if seed:  # written after `threads` and `rollout.backend` existed; seed 0 before (their defaults)
                c.update(threads="auto", rollout={"backend": "generate"})
            dirs.append(make_run(tmp_path / cell / f"seed{seed}", c))
    groups = rp.group_runs([rp.load_run(d) for d in dirs])
    assert sorted(len(g.runs) for g in groups) == [3, 3]  # threads did not split a cell
    labels = sorted(g.label for g in groups)
    assert labels[0] == "credit-blend: method=credit, swap=context, grpo_weight=0.9 (n=3 seeds)"
    assert labels[1] == "grpo: method=grpo, swap=input, grpo_weight=0.0 (n=3 seeds)"


def test_runs_outside_cells_differing_only_in_threads_are_one_group(tmp_path):
    a = make_run(tmp_path / "a", {"method": "sdpo", "seed": 0})
    b = make_run(tmp_path / "b", {"method": "sdpo", "seed": 1, "threads": 1, "log": {"tensorboard": False}})
    c = make_run(tmp_path / "c", {"method": "sdpo", "seed": 2, "credit": {"lam": 0.25}})
    groups = rp.group_runs([rp.load_run(d) for d in (a, b, c)])
    assert sorted(g.label for g in groups) == ["lam=0.25", "lam=0.5 (n=2 seeds)"]


def test_held_out_before_and_after_are_two_points_not_a_line(tmp_path):
    runs = [rp.load_run(make_run(tmp_path / f"r{s}", {"method": "credit", "seed": s})) for s in (0, 1)]
    figs = rp.build_figures(rp.group_runs(runs))
    ax = figs["heldout"].axes[0]
    assert ax.get_lines() and all(line.get_linestyle() == "None" for line in ax.get_lines())
    assert any(line.get_linestyle() == "-" for line in figs["reward"].axes[0].get_lines())
    for fig in figs.values():
        rp.viz.close(fig)
    many = [rp.load_run(make_run(tmp_path / "m", {"method": "credit"}, evals=(0, 2, 4, 6)))]
    figs = rp.build_figures(rp.group_runs(many))
    assert figs["heldout"].axes[0].get_lines()[0].get_linestyle() == "-"  # a measured curve stays a line
    for fig in figs.values():
        rp.viz.close(fig)


def test_pmi_table_names_items_by_line_and_says_n_a(capsys):
    where = "/tmp/pytest-of-someone/pytest-123/test_a_long_name0/run/rollouts.jsonl"
    items = [{"where": f"{where}:{n}", "tokens": 3, "reward": 0.0, "sum_dv": 0.5, "pmi": 0.5, "diff": 1e-7}
             for n in (1, 12)]
    pmi.print_table({"items": items, "summary": pmi.summarize(items)})
    out = capsys.readouterr().out
    assert "line 1" in out and "line 12" in out and "None" not in out
    items = [{"example": "train-000123-a-long-example-id", "tokens": 3, "reward": 1.0, "sum_dv": 0.5, "pmi": 0.5,
              "diff": 0.0, "empirical_pmi": 1.0, "log_p_z_given_x": -1.0}]
    pmi.print_table({"items": items, "summary": pmi.summarize(items)})
    raw = capsys.readouterr().out
    out = " ".join(raw.split())  # the console wraps at its width
    assert "(Spearman n/a;" in out and "None" not in out
    first_column = "".join(line.split("│")[1].strip() for line in raw.splitlines() if line.startswith("│"))
    assert first_column == "train-000123-a-long-example-id"  # folded onto lines if need be, never cut


def test_explain_png_centres_g_and_has_a_legend(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    e = ex.explain(model, tok, "What is 3 + 4?", "The answer is 7 and not 8.", feedback="The correct answer is 7.",
                   negatives=["What is 5 + 9?"], temperature=1.0)
    assert max(e.g) < 0  # G is a log-prob: drawn raw, the whole row would be red
    fig = ex.render_png(e)
    g_row = fig.axes[0].images[0].get_array()[2]
    assert (g_row > 0).any() and (g_row < 0).any()  # centred: some tokens above, some below the mean
    assert any("blue: the token gains credit" in t.get_text() for t in fig.texts)
    ex.viz.close(fig)


def test_a_missing_relative_path_says_where_it_was_looked_for(tmp_path, monkeypatch):
    from credit.tasks import build_task

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=rf"capitals.jsonl: no such file or folder \(a relative path is read from "
                                         rf"the working directory {tmp_path}\)"):
        build_task("prompts", path="capitals.jsonl", answer_field="a")
    (tmp_path / "capitals.jsonl").write_text('{"prompt": "Capital of France?", "answer": "Paris"}\n' * 1)
    with pytest.raises(ValueError, match=rf"file my_reward.py does not exist \(a relative path is read from "
                                         rf"the working directory {tmp_path}\)"):
        build_task("prompts", path="capitals.jsonl", reward="my_reward.py:reward")
