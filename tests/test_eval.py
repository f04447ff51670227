"""Results store, Wilson intervals, summary shape and the sequential evaluator on the fake suite."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fake_env import register

from harness.evaluate import evaluate, write_meta
from harness.results import ResultsStore, current_rows, format_table, make_row
from harness.rollout import EpisodeResult
from harness.stats import wilson


def row(i: int, success: bool, *, task: str = "reach", variant: str = "base", policy_hash: str = "h1") -> dict:
    result = EpisodeResult(success=success, steps=10 + i, wall_s=0.1, policy_calls=10 + i,
                           policy_ms=[1.0, 3.0], failure_reason="x" if (not success and i == 3) else None)
    return make_row(result, policy="p", policy_hash=policy_hash, suite="fake_basic", task=task,
                    variant=variant, episode_index=i, seed=0, render_mode="default", versions={"v": 1})


def test_wilson_matches_hand_computation():
    # 7/10, z = 1.96: centre (0.7 + 0.19207) / 1.38415, half-width 1.96 sqrt(0.021 + 0.0096037) / 1.38415
    low, high = wilson(7, 10)
    assert low == pytest.approx(0.396778, abs=1e-5) and high == pytest.approx(0.892209, abs=1e-5)
    assert wilson(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-5))
    assert wilson(10, 10) == (pytest.approx(0.722467, abs=1e-5), 1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes=3, n=2"):
        wilson(3, 2)


def test_store_retries_episodes_lost_to_a_worker_death(tmp_path):
    store = ResultsStore(tmp_path)
    lost = {**row(0, False), "failure_reason": "worker died 3 time(s) running this episode (last: X)"}
    assert store.add([lost, row(1, False)]) == 2
    assert store.done_keys() == {row(1, False)["key"]} and store.retry_keys() == {lost["key"]}
    early = store.summary()  # the lost episode is no failure of the policy: in no entry, counted apart
    assert early["overall"]["n"] == 1 and early["lost"] == 1
    assert list(current_rows(store.frame())["key"]) == [row(1, False)["key"]]
    assert store.add([row(0, True), row(1, True)]) == 1  # the lost episode's retry is stored, 1 stays
    for fresh in (store, ResultsStore(tmp_path)):
        df = fresh.frame()
        assert len(df) == 2 and df["key"].is_unique and df["failure_reason"].isna().all()
        assert df.set_index("episode_index")["success"].to_dict() == {0: True, 1: False}
        assert fresh.retry_keys() == set()
    store.compact()
    assert len(ResultsStore(tmp_path).frame()) == 2


def test_store_skips_done_keys_and_never_duplicates(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.add([row(0, True), row(1, False)]) == 2
    assert store.add([row(1, True), row(2, True), row(2, False)]) == 1  # 1 is done; 2 only once
    df = store.frame()
    assert len(df) == 3 and df["key"].is_unique
    assert not df.set_index("episode_index").loc[1, "success"]  # the first stored row wins
    assert store.add([row(0, True, policy_hash="h2")]) == 1  # another policy hash is another key
    assert len(ResultsStore(tmp_path).done_keys()) == 4
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_summary_counts_only_the_latest_hash_per_policy_and_suite(tmp_path):
    store = ResultsStore(tmp_path)
    old = [row(i, False, policy_hash="old") | {"finished_at": "2024-01-01T00:00:00+00:00"} for i in range(3)]
    new = [row(i, True, policy_hash="new") | {"finished_at": "2025-01-01T00:00:00+00:00"} for i in range(2)]
    store.add(old + new)
    assert len(store.frame()) == 5  # the old rows stay on record
    overall = store.summary()["overall"]
    assert (overall["successes"], overall["n"]) == (2, 2)
    assert store.summary(policy="someone_else")["overall"]["n"] == 0


def test_store_rejects_incomplete_rows_and_names_unreadable_file(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="lacks columns"):
        store.add([{"key": "k"}])
    (tmp_path / "episodes.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ValueError, match="episodes.parquet is unreadable"):
        ResultsStore(tmp_path).done_keys()


def test_store_appends_parts_and_compacts_without_losing_or_doubling_rows(tmp_path, monkeypatch):
    from harness import results

    monkeypatch.setattr(results, "COMPACT_EVERY", 8)
    store = ResultsStore(tmp_path)
    for i in range(20):
        assert store.add([row(i, i % 2 == 0)]) == 1
    parts = sorted((tmp_path / results.PARTS).glob("*.parquet"))
    assert (tmp_path / "episodes.parquet").exists() and 0 < len(parts) < 8  # compacted twice, 4 pending
    assert len(pd.read_parquet(tmp_path / "episodes.parquet")) == 16
    df = results.read_episodes(tmp_path)
    assert len(df) == 20 and df["key"].is_unique
    # a crash between compaction and part removal leaves a row on disk twice: readers count it once
    store.compact()
    pd.read_parquet(tmp_path / "episodes.parquet").head(3).to_parquet(tmp_path / results.PARTS / "0-1.parquet")
    again = ResultsStore(tmp_path)
    assert len(again.frame()) == 20 and again.add([row(0, False)]) == 0
    assert again.write_summary()["overall"]["n"] == 20
    assert not list((tmp_path / results.PARTS).glob("*.parquet"))  # write_summary compacts


def test_summary_shape_and_values(tmp_path):
    store = ResultsStore(tmp_path)
    store.add([row(i, i < 3) for i in range(4)] + [row(i, i < 1, variant="dark") for i in range(2)]
              + [row(i, True, task="reach_early") for i in range(2)])
    summary = store.write_summary()
    assert set(summary) == {"per_task", "per_group", "overall", "lost"} and summary["lost"] == 0
    assert set(summary["per_task"]) == {"fake_basic/reach", "fake_basic/reach_early"}
    assert set(summary["per_group"]) == {"fake_basic", "fake_basic/base", "fake_basic/dark"}
    reach = summary["per_task"]["fake_basic/reach"]
    assert (reach["successes"], reach["n"]) == (4, 6)
    assert (reach["ci_low"], reach["ci_high"]) == pytest.approx(wilson(4, 6))
    assert reach["per_variant"]["dark"]["n"] == 2 and reach["per_variant"]["base"]["success_rate"] == 0.75
    assert summary["per_group"]["fake_basic/base"]["n"] == 6
    overall = summary["overall"]
    assert (overall["successes"], overall["n"]) == (6, 8)
    assert overall["mean_steps"] == pytest.approx((10 + 11 + 12 + 13 + 10 + 11 + 10 + 11) / 8)
    assert overall["mean_policy_ms"] == pytest.approx(2.0)
    assert overall["failures"] == 1  # only base episode 3 carries a failure reason
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    table = format_table(summary)
    assert "fake_basic/reach" in table and "75.0%" in table and "overall" in table
    # the dark variant replays base episodes 0 and 1: 8 episodes from 6 initial states
    by_state = overall["by_state"]
    assert by_state["states"] == 6 and summary["per_group"]["fake_basic"]["by_state"] == by_state
    assert 0.0 <= by_state["ci_low"] <= 6 / 8 <= by_state["ci_high"] <= 1.0
    assert "by initial state" in table and "    6 states  [" in table
    assert "by_state" not in summary["per_group"]["fake_basic/base"]  # one variant: no state repeats


def test_evaluate_expert_end_to_end_and_resume(tmp_path, monkeypatch):
    suite = register(monkeypatch)
    out = tmp_path / "run"
    summary = evaluate("expert", suite, tasks=["reach", "unreachable"], variant="all", episodes=3,
                       out=out, progress=False, quiet=True, videos=1)
    df = pd.read_parquet(out / "episodes.parquet")
    assert len(df) == 2 * 2 * 3 and df["key"].is_unique
    assert set(df["variant"]) == {"base", "dark"}
    assert summary["per_task"]["fake_basic/reach"]["success_rate"] == 1.0
    assert summary["per_task"]["fake_basic/unreachable"]["success_rate"] == 0.0
    assert df["policy_hash"].str.startswith("expert-").all() and (df["render_mode"] == "default").all()
    assert json.loads(df["versions"][0])["git_commit"] is not None
    assert (out / "videos" / suite / "reach" / "dark" / "ep0000.mp4").stat().st_size > 0
    assert not (out / "videos" / suite / "reach" / "dark" / "ep0001.mp4").exists()
    # the run folder describes its policy for the report; fields written before (a chosen name) are kept
    assert json.loads((out / "meta.json").read_text())["kind"] == "expert"
    write_meta(out, {"policy": "my-expert", "kind": "teacher"})
    assert json.loads((out / "meta.json").read_text())["kind"] == "expert"

    # a rerun with more episodes runs only the new ones; finished rows are left as they were
    before = df.set_index("key")["finished_at"]
    evaluate("expert", suite, tasks=["reach"], variant="base", episodes=5, out=out, progress=False, quiet=True)
    df2 = pd.read_parquet(out / "episodes.parquet").set_index("key")
    assert len(df2) == 12 + 2 and df2.index.is_unique
    assert (df2.loc[before.index, "finished_at"] == before).all()

    # another seed gives other initial states: new episodes, pooled with the first seed's in the summary
    again = evaluate("expert", suite, tasks=["reach"], variant="base", episodes=2, seed=5, out=out,
                     progress=False, quiet=True)
    df3 = pd.read_parquet(out / "episodes.parquet")
    assert len(df3) == 14 + 2 and df3["key"].is_unique and sorted(set(df3["seed"])) == [0, 5]
    assert again["per_task"]["fake_basic/reach"]["n"] == 5 + 3 + 2  # base 5, dark 3, then 2 at seed 5


def test_evaluate_records_crashing_env_and_names_bad_values(tmp_path, monkeypatch):
    suite = register(monkeypatch)
    summary = evaluate("expert", suite, tasks=["crash"], episodes=2, out=tmp_path, progress=False, quiet=True)
    assert summary["overall"]["failures"] == 2 and summary["overall"]["successes"] == 0
    with pytest.raises(ValueError, match="'nope'.*valid tasks: reach, reach_early"):
        evaluate("expert", suite, tasks=["nope"], out=tmp_path, quiet=True)
    with pytest.raises(ValueError, match="'night'.*valid variants: base, dark"):
        evaluate("expert", suite, variant="night", out=tmp_path, quiet=True)
    with pytest.raises(FileNotFoundError, match="'no/such/ckpt'"):
        evaluate("no/such/ckpt", suite, out=tmp_path, quiet=True)


def test_evaluate_runs_a_per_variant_plan_in_one_call(tmp_path, monkeypatch, capsys):
    suite = register(monkeypatch)
    out = tmp_path / "run"
    summary = evaluate("expert", suite, tasks=["reach"], episodes_by_variant={"base": 3, "dark": 1}, out=out,
                       progress=False, table=False)
    assert "(base x 3 + dark x 1) episode(s); 0 already done, 4 to run" in capsys.readouterr().out
    df = pd.read_parquet(out / "episodes.parquet")
    assert sorted(zip(df["variant"], df["episode_index"])) == [("base", 0), ("base", 1), ("base", 2), ("dark", 0)]
    assert summary["overall"]["n"] == 4
    # the plain form over the same keys finds them done
    evaluate("expert", suite, tasks=["reach"], variant="base", episodes=3, out=out, progress=False, table=False)
    assert "3 already done, 0 to run" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'night'.*valid variants: base, dark"):
        evaluate("expert", suite, episodes_by_variant={"night": 1}, out=out, quiet=True)
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0 \\(variant 'dark'\\)"):
        evaluate("expert", suite, episodes_by_variant={"base": 1, "dark": 0}, out=out, quiet=True)
    with pytest.raises(ValueError, match="episodes_by_variant is empty"):
        evaluate("expert", suite, episodes_by_variant={}, out=out, quiet=True)


def test_distinct_states_give_each_variant_its_own_initial_states(tmp_path, monkeypatch, capsys):
    from harness.evaluate import episode_indices

    assert episode_indices({"a": 3, "b": 1, "c": 2}) == {"a": range(3), "b": range(1), "c": range(2)}
    assert episode_indices({"a": 3, "b": 1, "c": 2}, distinct_states=True) == \
        {"a": range(3), "b": range(3, 4), "c": range(4, 6)}
    suite = register(monkeypatch)
    out = tmp_path / "run"
    summary = evaluate("expert", suite, tasks=["reach"], episodes_by_variant={"base": 3, "dark": 2}, out=out,
                       distinct_states=True, videos=1, progress=False, table=False)
    assert "each on its own initial state (indices 0-4)" in capsys.readouterr().out
    df = pd.read_parquet(out / "episodes.parquet")
    assert sorted(zip(df["variant"], df["episode_index"])) == \
        [("base", 0), ("base", 1), ("base", 2), ("dark", 3), ("dark", 4)]
    assert summary["overall"]["by_state"]["states"] == 5  # with shared states it would be 3
    # the first episode of each variant gets the video, whatever its index
    videos = sorted(p.name for p in (out / "videos").rglob("*.mp4"))
    assert videos == ["ep0000.mp4", "ep0003.mp4"]
    # a rerun finds everything done; a folder holding the shared-state plan is refused, not pooled
    evaluate("expert", suite, tasks=["reach"], episodes_by_variant={"base": 3, "dark": 2}, out=out,
             distinct_states=True, progress=False, table=False)
    assert "5 already done, 0 to run" in capsys.readouterr().out
    shared = tmp_path / "shared"
    evaluate("expert", suite, tasks=["reach"], episodes_by_variant={"base": 3, "dark": 2}, out=shared,
             progress=False, table=False, quiet=True)
    with pytest.raises(ValueError, match="2 episode\\(s\\) of this policy .* outside this plan, e.g. reach / dark "
                                         "episode 0.*evaluate into a new --out"):
        evaluate("expert", suite, tasks=["reach"], episodes_by_variant={"base": 3, "dark": 2}, out=shared,
                 distinct_states=True, quiet=True)
    assert len(pd.read_parquet(shared / "episodes.parquet")) == 5  # nothing stored was touched


def test_execute_k_calls_the_model_every_k_steps_and_keys_the_run_apart(tmp_path):
    import json

    from harness.evaluate import evaluate, policy_source
    from harness.results import read_episodes
    from tasks.errors import UserInputError

    teacher = "results/checkpoints/teacher-simpler"
    out = tmp_path / "run"
    for k in (None, 2):
        evaluate(policy_source(teacher, execute=k), "simpler_widowx", tasks=["put_carrot_on_plate"], episodes=1,
                 seed=0, out=out, max_steps=10, progress=False, quiet=True)
    rows = read_episodes(out)
    assert rows["policy_hash"].nunique() == 2  # K is part of the policy's identity: no result reused
    calls = sorted(json.loads(info)["flops"]["n"] for info in rows["info"])
    assert calls == [2, 5]  # 10 steps: chunks of 8 -> 2 calls; K = 2 -> 5 calls
    assert json.loads((out / "meta.json").read_text())["execute"] == 2
    with pytest.raises(UserInputError, match="--execute applies to checkpoints"):
        policy_source("expert", execute=2)


def test_evaluate_builds_one_probe_environment_for_repeated_runs(tmp_path, monkeypatch):
    import harness.evaluate as ev

    suite = register(monkeypatch)
    built = []
    make = ev.suites.make
    monkeypatch.setattr(ev.suites, "make", lambda *a, **k: built.append(a) or make(*a, **k))
    ev.close_probe_envs()
    for name in ("a", "b"):  # two policies on one suite, as a sweep runs them
        evaluate("expert", suite, tasks=["reach"], episodes=1, out=tmp_path / name, progress=False, quiet=True)
    # the first run builds its probe and its episode's environment; the second reuses the probe
    assert len(built) == 3 and len(ev._PROBES) == 1
    for seed in range(ev.PROBE_CACHE_SIZE + 1):  # other arguments: other probes, the oldest closed
        ev.probe_env(suite, "reach", "base", seed + 1, {})
    assert len(ev._PROBES) == ev.PROBE_CACHE_SIZE
    ev.close_probe_envs()
    assert not ev._PROBES


def test_evaluate_policies_gives_each_policy_its_own_runs_rows_and_builds_each_env_once(tmp_path, monkeypatch):
    """Several policies in one call: every policy's rows are exactly its own evaluate() call's (keys, outcomes,
    steps), each in its own folder, and each (task, variant) environment is built once for all of them."""
    from fake_env import FakeExpert

    import harness.evaluate as ev

    class Still(FakeExpert):
        def act(self, obs):
            return super().act(obs) * 0.0

    suite = register(monkeypatch)
    still = ev.PolicySource("still", build=Still, hash_for=lambda env: "h-still", meta={"kind": "baseline"})
    kw = {"tasks": ["reach", "unreachable"], "variant": "all", "episodes": 2, "progress": False, "quiet": True}
    alone = {name: evaluate(p, suite, out=tmp_path / f"alone-{name}", **kw) for name, p in
             (("expert", "expert"), ("still", still))}
    built = []
    make = ev.suites.make
    monkeypatch.setattr(ev.suites, "make", lambda *a, **k: built.append(a) or make(*a, **k))
    ev.close_probe_envs()
    together = ev.evaluate_policies([("expert", tmp_path / "expert"), (still, tmp_path / "still")], suite, **kw)
    assert len(built) == 1 + 2 * 2  # one probe, then each (task, variant) once for both policies
    cols = ["policy", "policy_hash", "task", "variant", "episode_index", "success", "steps", "policy_calls"]
    for name, summary in zip(("expert", "still"), together):
        got = pd.read_parquet(tmp_path / name / "episodes.parquet").set_index("key").sort_index()
        want = pd.read_parquet(tmp_path / f"alone-{name}" / "episodes.parquet").set_index("key").sort_index()
        assert len(got) == 2 * 2 * 2
        pd.testing.assert_frame_equal(got[cols], want[cols])
        timing = {"mean_policy_ms", "mean_wall_s"}
        assert {k: v for k, v in summary["overall"].items() if k not in timing} == {
            k: v for k, v in alone[name]["overall"].items() if k not in timing}
    assert together[0]["overall"]["success_rate"] == 0.5 and together[1]["overall"]["success_rate"] == 0.0
    assert json.loads((tmp_path / "still" / "meta.json").read_text())["kind"] == "baseline"
    # a rerun has nothing left to do; one folder for two policies is refused before anything runs
    built.clear()
    ev.evaluate_policies([("expert", tmp_path / "expert"), (still, tmp_path / "still")], suite, **kw)
    assert len(built) == 0
    with pytest.raises(ValueError, match="for more than one policy"):
        ev.evaluate_policies([("expert", tmp_path / "x"), (still, tmp_path / "x")], suite, **kw)
