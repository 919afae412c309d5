"""credit report: runs load, group by seed, plot the expected series, and fail clearly on bad input."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from credit.analysis import report as rp


def make_run(path, method, seed, steps=6, reward=None):
    """A run directory in the training loop's format. reward(step, seed) -> task/reward_mean."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(
        {"method": method, "seed": seed, "model": {"name": "tiny"}, "task": {"name": "addition"}}))
    reward = reward or (lambda s, seed: 0.1 * s + 0.01 * seed)
    with (path / "metrics.jsonl").open("w") as f:
        for s in range(steps):
            row = {"step": s, "time_s": 1.0 * s, "task/reward_mean": reward(s, seed), "loss/total": 1.0 / (s + 1),
                   "perf/rollout_tokens_per_s": 100.0 + seed, "perf/step_s": 2.0}
            if method != "grpo":
                row.update({"signal/dv_mean": 0.01 * s, "signal/s_mean": 0.02 * s, "signal/g_mean": -3.0})
            if s % 2 == 0:
                row["eval/mean@4"] = 0.05 * s
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    dirs = [make_run(tmp_path / f"credit-s{s}", "credit", s) for s in (0, 1, 2)]
    dirs += [make_run(tmp_path / f"sdpo-s{s}", "sdpo", s, reward=lambda st, sd: 0.05 * st) for s in (0, 1)]
    dirs.append(make_run(tmp_path / "grpo-s0", "grpo", 0, steps=4))
    return dirs


def test_groups_by_config_except_seed(runs):
    groups = rp.group_runs([rp.load_run(d) for d in runs])
    by_label = {g.label: sorted(r.name for r in g.runs) for g in groups}
    assert by_label == {"method=credit (n=3 seeds)": ["credit-s0", "credit-s1", "credit-s2"],
                        "method=sdpo (n=2 seeds)": ["sdpo-s0", "sdpo-s1"], "method=grpo": ["grpo-s0"]}
    credit = next(g for g in groups if g.label.startswith("method=credit"))
    steps, mean, std = credit.series("task/reward_mean")
    assert steps == list(range(6))
    assert mean[2] == pytest.approx(0.2 + 0.01)  # seeds add 0, .01, .02 -> mean .01
    assert std[2] == pytest.approx(0.01)  # sample std of (0, .01, .02)


def test_figures_hold_the_expected_series(runs):
    groups = rp.group_runs([rp.load_run(d) for d in runs])
    figs = rp.build_figures(groups)
    assert set(figs) == {"reward", "heldout", "signal_means", "loss", "perf"}  # no spread metrics logged
    ax = figs["reward"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {g.label for g in groups}
    assert list(lines["method=sdpo (n=2 seeds)"].get_ydata()) == pytest.approx([0.05 * s for s in range(6)])
    assert list(lines["method=grpo"].get_xdata()) == [0, 1, 2, 3]
    assert len(ax.collections) == 2  # std bands for the two multi-seed groups only
    assert [a.get_title() for a in figs["signal_means"].axes] == ["signal/dv_mean", "signal/s_mean", "signal/g_mean"]
    assert len(figs["signal_means"].axes[0].get_lines()) == 2  # grpo logs no signal
    heldout = {line.get_label(): list(line.get_xdata()) for line in figs["heldout"].axes[0].get_lines()}
    assert heldout["method=credit (n=3 seeds)"] == [0, 2, 4]  # only the eval steps
    for fig in figs.values():
        rp.viz.close(fig)


def test_make_report_writes_pngs_and_html(runs, tmp_path):
    paths = rp.make_report(runs, tmp_path / "out")
    assert paths["reward"].read_bytes()[:4] == b"\x89PNG"
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 5
    for d in runs:
        assert d.name in page
    assert "±" in page and "<script" not in page


def _cli(argv):
    parser = argparse.ArgumentParser()
    rp.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_report_bad_input(runs, tmp_path, capsys):
    assert _cli(["report", str(runs[0]), "--out", str(tmp_path / "o")]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no metrics.jsonl" in err and "Traceback" not in err
    bad = runs[1] / "metrics.jsonl"
    lines = bad.read_text().splitlines()
    lines[2] = lines[2][:10]
    bad.write_text("\n".join(lines) + "\n")
    assert _cli(["report", str(runs[0]), str(runs[1])]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: not valid JSON" in err and "Traceback" not in err
    bad.write_text('{"time_s": 1}\n')
    assert _cli(["report", str(runs[1])]) == 2
    assert "field 'step'" in capsys.readouterr().err
