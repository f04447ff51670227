"""The report from small synthetic run folders: tables, figures, routing, variant aggregation, and that
it imports neither Ray nor a simulator nor torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pandas as pd
import pytest
from fake_env import FakeEnv, FakeExpert

from harness.report import (
    build_report,
    load_run,
    merge_runs,
    pareto_front,
    routing_matrix,
    suite_table,
    variant_table,
)
from harness.results import ResultsStore, make_row
from harness.rollout import EpisodeResult, rollout
from harness.videos import BAND, annotate_frames, write_episode_video

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("visual_matching", "lighting_darker", "table_texture")


def write_run(
    path: Path,
    policy: str,
    rates: dict[str, float],
    *,
    meta: dict | None = None,
    layers: list[float] | None = None,
    layers_key: str = "layer_mask",
    flops: float | None = None,
    n: int = 4,
    suite: str = "simpler_google",
    policy_hash: str | None = None,
) -> None:
    """A run on simpler_google: per task, ``n`` episodes per variant, success rate ``rates[task]`` on
    visual_matching and half of it on the other variants; info as a routed policy's rollout stores it."""
    rows = []
    for task, rate in rates.items():
        for variant in VARIANTS:
            k = round(n * (rate if variant == "visual_matching" else rate / 2))
            for i in range(n):
                info = {}
                if layers is not None:
                    calls = 3
                    info[layers_key] = {"mean": layers, "sum": [calls * x for x in layers], "n": calls}
                if flops is not None:
                    info["flops"] = {"mean": flops, "sum": 3 * flops, "n": 3}
                result = EpisodeResult(
                    success=i < k, steps=10, wall_s=0.1, policy_calls=10, policy_ms=[2.0], info=info
                )
                rows.append(
                    make_row(
                        result,
                        policy=policy,
                        policy_hash=policy_hash or "h-" + policy,
                        suite=suite,
                        task=task,
                        variant=variant,
                        episode_index=i,
                        seed=0,
                        render_mode="default",
                        versions={},
                    )
                )
    ResultsStore(path).add(rows)
    if meta is not None:
        (path / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    rates = {"pick_can": 1.0, "move_near": 0.5}
    dirs = [tmp_path / name for name in ("expert", "teacher", "student_50", "first_k_50")]
    write_run(dirs[0], "expert", rates)
    write_run(
        dirs[1],
        "ckpt/teacher",
        rates,
        meta={"policy": "teacher", "kind": "teacher", "latency_ms": 20.0},
        layers=[1.0, 1.0, 1.0, 1.0],
        flops=4e9,
    )
    write_run(
        dirs[2],
        "ckpt/s50",
        {"pick_can": 1.0, "move_near": 0.25},
        meta={"policy": "student_50", "kind": "student", "budget": 0.5, "latency_ms": 11.0},
        layers=[1.0, 0.5, 0.25, 0.25],
        flops=2e9,
    )
    write_run(
        dirs[3],
        "first_k",
        {"pick_can": 0.5, "move_near": 0.0},
        meta={
            "policy": "first_k_50",
            "kind": "baseline",
            "budget": 0.5,
            "method": "first_k",
            "flops_per_call": 2.1e9,
        },
        layers=[1.0, 1.0, 0.0, 0.0],
    )
    (dirs[3] / "latency.json").write_text(json.dumps({"median_ms": 10.5, "p90_ms": 11.0}))
    return dirs


def test_report_writes_every_figure_and_table(runs, tmp_path):
    out = tmp_path / "figures"
    written = {p.name for p in build_report(runs, out)}
    for stem in ("success_vs_flops", "success_vs_latency", "routing_teacher", "routing_student_50"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= written
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert "routing_expert.png" not in written

    tasks = pd.read_csv(out / "per_task_success.csv").set_index(["run", "task"])
    pick = tasks.loc[("student_50", "pick_can")]  # 4/4 + 2/4 + 2/4 over the three variants
    assert (pick["successes"], pick["n"]) == (8, 12) and pick["rate"] == pytest.approx(8 / 12)
    assert "67% [39, 86] n=12" in (out / "per_task_success.md").read_text()

    suites = pd.read_csv(out / "suite_summary.csv").set_index("run")
    assert suites.loc["teacher", "flops_per_call"] == pytest.approx(4e9)  # pooled from info["flops"]
    # per environment step: 3 model calls over 10 steps per episode
    assert suites.loc["teacher", "actions_per_call"] == pytest.approx(10 / 3)
    assert suites.loc["teacher", "flops_per_step"] == pytest.approx(3 * 4e9 / 10)
    assert math.isnan(suites.loc["expert", "flops_per_step"])  # no model calls recorded
    assert suites.loc["first_k_50", "flops_per_call"] == pytest.approx(2.1e9)  # meta wins
    assert suites.loc["first_k_50", "latency_ms"] == pytest.approx(10.5)  # from latency.json
    assert np.isnan(suites.loc["expert", "latency_ms"])

    variants = pd.read_csv(out / "variant_aggregation.csv").set_index(["run", "task"])
    move = variants.loc[("teacher", "move_near")]  # 2/4 on visual matching, 1/4 on each other variant
    assert move["visual_matching"] == pytest.approx(0.5) and move["variant_aggregation"] == pytest.approx(
        0.25
    )
    assert move["va_variants"] == 2 and move["va_n"] == 8
    assert variants.loc[("teacher", "(mean)"), "visual_matching"] == pytest.approx(0.75)

    report = (out / "report.md").read_text()
    assert "expert" in report and "success_vs_flops.pdf" in report


def test_routing_heatmap_reads_runs_stored_under_the_old_name(tmp_path):
    write_run(tmp_path / "old", "old", {"pick_can": 0.5}, layers=[1.0, 0.0, 0.5], layers_key="layer_executed")
    tasks, matrix = routing_matrix(load_run(tmp_path / "old"))
    assert tasks == ["simpler_google/pick_can"]
    np.testing.assert_allclose(matrix, [[1.0, 0.0, 0.5]])


def test_routing_variant_and_pareto_helpers(runs):
    tasks, matrix = routing_matrix(load_run(runs[2]))
    assert tasks == ["simpler_google/move_near", "simpler_google/pick_can"]
    np.testing.assert_allclose(matrix, [[1.0, 0.5, 0.25, 0.25]] * 2)
    assert routing_matrix(load_run(runs[0])) is None
    assert variant_table([load_run(runs[0])], base_variant="night").empty
    # cost/success: (1, .5) (2, .9) (2, .4) (3, .8) (4, .95): the front is 0, 1, 4
    assert pareto_front(np.array([1, 2, 2, 3, 4.0]), np.array([0.5, 0.9, 0.4, 0.8, 0.95])).tolist() == [
        0,
        1,
        4,
    ]


def test_report_errors_name_the_problem(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no episodes.parquet"):
        build_report([tmp_path / "nothing"], tmp_path / "o")
    (runs[1] / "meta.json").write_text(json.dumps({"kind": "oracle"}))
    with pytest.raises(ValueError, match="'oracle'; valid kinds: teacher, student"):
        load_run(runs[1])
    (runs[1] / "meta.json").write_text(json.dumps({"policy": "student_50"}))
    with pytest.raises(ValueError, match="are both named 'student_50' and both hold suite"):
        build_report(runs, tmp_path / "o")


def test_same_policy_on_other_suites_is_pooled(runs, tmp_path):
    libero = tmp_path / "libero-expert"
    write_run(libero, "expert", {"put_bowl": 1.0}, suite="libero_spatial")
    suites = suite_table(merge_runs([load_run(r) for r in [*runs, libero]]))
    expert = suites[suites["run"] == "expert"]
    assert sorted(expert["suite"]) == ["libero_spatial", "simpler_google"]
    assert build_report([*runs, libero], tmp_path / "o")  # one "expert" over both suites
    write_run(tmp_path / "other", "expert", {"pick_can": 0.0}, suite="simpler_google")
    with pytest.raises(ValueError, match="both hold suite"):
        build_report([*runs, tmp_path / "other"], tmp_path / "o2")


def test_a_rerun_with_new_weights_replaces_the_old_rows_in_report_and_regress(tmp_path):
    from harness.regress import _episodes

    run = tmp_path / "student"
    write_run(run, "ckpt/s50", {"pick_can": 0.0, "move_near": 0.0}, policy_hash="old")
    write_run(run, "ckpt/s50", {"pick_can": 1.0, "move_near": 1.0}, policy_hash="new", n=2)
    loaded = load_run(run)
    assert set(loaded.episodes["policy_hash"]) == {"new"} and len(loaded.episodes) == 2 * 2 * len(VARIANTS)
    suites = suite_table([loaded])
    assert int(suites["n"].iloc[0]) == 12
    assert set(_episodes(run)["policy_hash"]) == {"new"}


def test_report_verb_imports_no_ray_simulator_or_torch(runs, tmp_path):
    code = (
        "import sys; from harness.cli import main\n"
        f"rc = main(['report', '--runs', *{[str(r) for r in runs]!r}, '--out', {str(tmp_path / 'f')!r}])\n"
        "heavy = sorted(m for m in ('ray', 'torch', 'mujoco', 'robosuite', 'libero', 'gymnasium', 'tasks.registry',\n"
        "                            'distill') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'RC', rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY [] RC 0" in proc.stdout
    assert (tmp_path / "f" / "success_vs_latency.pdf").exists()


def test_episode_video_has_every_frame_and_the_overlay(tmp_path):
    env = FakeEnv("fake_basic", "reach", "base", seed=0)
    result = rollout(FakeExpert(env), env, episode_index=0, seed=0, videos=True)
    assert result.success and len(result.frames) == result.steps + 1
    path = write_episode_video(result, tmp_path / "v" / "ep0000.mp4", title="expert | reach")
    video = np.stack(imageio.mimread(path))  # (T, H, W, 3)
    assert video.shape == (result.steps + 1, 2 * 128 + 3 * BAND, 256, 3)

    good = annotate_frames(result.frames[:2], [1.0], True)[0]
    bad = annotate_frames(result.frames[:2], [1.0], False, failure_reason="policy raised")[0]
    outcome_band = (slice(-BAND, None), slice(None))
    assert np.array_equal(good[BAND : -2 * BAND], bad[BAND : -2 * BAND])  # the image itself is untouched
    green = good[outcome_band][..., 1].astype(int) - good[outcome_band][..., 0]
    red = bad[outcome_band][..., 0].astype(int) - bad[outcome_band][..., 1]
    assert green.max() > 100 and red.max() > 100  # SUCCESS drawn in green, FAILURE in red
    assert good[:BAND].max() > 200  # title and step counter drawn


def test_latency_figure_draws_only_one_pass_and_the_speedup_figure_all(tmp_path):
    """Medians from separate latency passes are never drawn side by side; speedups (each against the teacher
    in its own pass) are, and every policy keeps one colour across figures."""
    from harness.report import group_colours, latency_points, policy_group, suite_table

    rates = {"pick_can": 1.0}
    names = ("teacher", "student_50", "first_k_50", "random_50")
    kinds = ("teacher", "student", "baseline", "baseline")
    passes = ("p1", "p1", "p1", "p2")  # random_50 was timed on its own, minutes later
    dirs = []
    for name, kind, pid, median in zip(names, kinds, passes, (20.0, 11.0, 10.5, 30.0)):
        d = tmp_path / name
        meta = {"policy": name, "kind": kind, **({"method": name[:-3]} if kind == "baseline" else {})}
        write_run(d, name, rates, meta=meta, flops=1e9)
        (d / "latency.json").write_text(json.dumps({
            "median_ms": median, "p90_ms": median, "round_medians_ms": [median - 1, median, median + 2],
            "pass": {"id": pid}, "speedup": 20.0 / median if pid == "p1" else 1.6, "speedup_rounds": [1.0, 2.0]}))
        dirs.append(d)
    runs = [load_run(d) for d in dirs]
    table = suite_table(runs)
    pts, notes = latency_points(table)
    assert sorted(pts["run"]) == ["first_k_50", "student_50", "teacher"]
    assert len(notes) == 1 and "random_50 timed in another latency pass" in notes[0]
    assert table.set_index("run").loc["student_50", "latency_lo_ms"] == 10.0
    assert table.set_index("run").loc["random_50", "speedup"] == 1.6
    # one colour per method, distinct, the teacher black
    colours = group_colours(table)
    assert colours["teacher"] == "#111111"
    assert [policy_group(r) for _, r in table.iterrows()] == ["teacher", "student", "first_k", "random"]
    assert len(set(colours.values())) == 4
    written = build_report(dirs, tmp_path / "figures")
    assert {p.name for p in written} >= {"success_vs_latency.pdf", "success_vs_speedup.png", "success_vs_speedup.pdf"}
    report = (tmp_path / "figures" / "report.md").read_text()
    assert "random_50 timed in another latency pass" in report


def test_ablation_table_pairs_every_method_of_a_budget_with_actdistill(tmp_path):
    """ablation.md: at b0.50 the router without graph supervision and a baseline, each with ActDistill's gap
    over it by state; a run of another budget is not in the b0.50 rows."""
    from harness.report import ablation_table, load_run

    specs = [("student_50", 1.0, {"kind": "student", "budget": 0.5, "method": "ActDistill"}),
             ("nograph_50", 0.5, {"kind": "student", "budget": 0.5, "method": "router without graph supervision"}),
             ("first_k_50", 0.25, {"kind": "baseline", "budget": 0.5, "method": "first_k"}),
             ("first_k_25", 0.0, {"kind": "baseline", "budget": 0.25, "method": "first_k"})]
    dirs = []
    for name, rate, meta in specs:
        write_run(tmp_path / name, name, {"pick_can": rate}, meta={"policy": name, **meta})
        dirs.append(tmp_path / name)
    table = ablation_table([load_run(d) for d in dirs]).set_index("run")
    assert list(table.index) == ["student_50", "nograph_50", "first_k_50"]
    # 4 episodes per variant, 3 variants; success on visual matching at the rate, elsewhere at half of it:
    # ActDistill 4 + 2 + 2 = 8 of 12, no graph 2 + 1 + 1 = 4 (round(4 * 0.25) = 1), first_k 1 + 0 + 0 = 1
    assert table.loc["student_50", "successes"] == 8 and math.isnan(table.loc["student_50", "actdistill_gap"])
    assert table.loc["nograph_50", "actdistill_gap"] == pytest.approx((8 - 4) / 12)
    assert table.loc["first_k_50", "actdistill_gap"] == pytest.approx((8 - 1) / 12)
    low, high = table.loc["nograph_50", ["gap_low", "gap_high"]]
    assert low <= (8 - 4) / 12 <= high and high - low > 0
    build_report(dirs, tmp_path / "figures")
    md = (tmp_path / "figures" / "ablation.md").read_text()
    assert "router without graph supervision" in md and "+33.3 [" in md and "reference" in md


def test_point_labels_do_not_overlap_even_where_points_crowd():
    """Twelve policies at about 0% success and nearby costs (a hard suite): every label is drawn, inside the
    panel, and no two labels overlap (they move up, with leader lines, where the row is full)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.report import _label_points

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    pts = pd.DataFrame({"run": [f"policy-number-{i}" for i in range(12)],
                        "flops": [1.0 + 0.05 * i for i in range(12)], "rate": [0.0, 0.02] * 6})
    ax.plot(pts["flops"], pts["rate"], "o")
    ax.set_ylim(-0.03, 1.03)
    fig.tight_layout()
    _label_points(ax, pts, "flops")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = list(ax.texts)
    assert sorted(t.get_text() for t in texts) == sorted(pts["run"])
    boxes = [t.get_window_extent(renderer) if t.arrow_patch is None else
             matplotlib.text.Text.get_window_extent(t, renderer) for t in texts]
    frame = ax.get_window_extent(renderer)
    for i, a in enumerate(boxes):
        assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    plt.close(fig)
