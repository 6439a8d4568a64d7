"""The mini benchmark's pure parts, with numbers: standard errors, frontier gaps, grid extension, claim judgement,
--only selection, the data-layout shim and the training command of every registry method."""

import json
import math

import pytest

from open_clip_dive.bench import methods as M
from open_clip_dive.bench.claims import judge_claims
from open_clip_dive.bench.collect import aggregate, borrow_se, norm_trace
from open_clip_dive.bench.page import builds_note, steps_note, outside_range_cells
from open_clip_dive.bench.plan import best_weight, extension, is_interior, parse_grid_overrides, parse_steps, seeds_of
from open_clip_dive.bench.runner import Job, fold_interrupted, parse_only, read_sittings, selected
from open_clip_dive.bench.stats import FAILS, HOLDS, UNSURE, frontier_gap, interpolate, judge, mean_se, pooled_sd
from open_clip_dive.bench.tasks import tasks_of
from open_clip_dive.errors import DiveUsageError
from open_clip_dive.experiment import Recipe, recipe_changes, train_command


def test_mean_and_standard_error():
    mean, se, n = mean_se([80.0, 82.0, 84.0])
    assert (mean, n) == (82.0, 3)
    assert se == pytest.approx(2 / math.sqrt(3))  # sample sd 2 (n - 1), / sqrt(3)
    assert mean_se([5.0]) == (5.0, None, 1)
    assert mean_se([]) == (None, None, 0)
    # pooled over groups: ((1+1) + (4+4)) / (1 + 1) = 5 -> sd sqrt(5); a one-seed group adds nothing
    assert pooled_sd([[1.0, 3.0], [0.0, 4.0], [7.0]]) == pytest.approx(math.sqrt(5))


def test_frontier_interpolation_and_gap():
    curve = [(70.0, 50.0), (80.0, 60.0), (90.0, 55.0)]
    assert interpolate(curve, 75.0) == pytest.approx(55.0)
    assert interpolate(curve, 85.0) == pytest.approx(57.5)
    assert interpolate(curve, 95.0) is None  # no extrapolation
    # a curve that folds back in x: the upper envelope
    assert interpolate([(70.0, 50.0), (90.0, 70.0), (80.0, 40.0)], 85.0) == pytest.approx(65.0)
    g = frontier_gap([(70.0, 50.0, 1.0), (80.0, 60.0, 3.0)], 77.5, 61.0, 1.5)
    assert g["frontier"] == pytest.approx(57.5)
    assert g["gap"] == pytest.approx(3.5)
    assert g["se"] == pytest.approx(math.sqrt(1.5 ** 2 + 2.5 ** 2))  # frontier SE interpolated: 2.5
    assert frontier_gap([(70.0, 50.0, 1.0), (80.0, 60.0, 1.0)], 60.0, 50.0, 1.0) is None


def test_claim_judgement_at_two_standard_errors():
    assert judge(3.0, 1.0) == HOLDS  # 3 - 2 > 0
    assert judge(1.5, 1.0) == UNSURE
    assert judge(-2.5, 1.0) == FAILS  # -2.5 + 2 < 0
    assert judge(0.5, None) == UNSURE  # one seed and nothing to borrow from: nothing can be told
    assert judge(-0.5, 0.2, threshold=-1.0) == HOLDS  # "kept within 1 point": -0.9 > -1
    assert judge(0.2, 0.3, parity=1.0) == HOLDS  # [-0.4, 0.8] inside [-1, 1]
    assert judge(0.2, 0.5, parity=1.0) == UNSURE  # [-0.8, 1.2]
    assert judge(-3.0, 0.5, parity=1.0) == FAILS  # [-4, -2] outside


def test_grid_extends_by_half_decades_until_the_best_is_interior():
    assert extension({1.0: 50.0, 10.0: 40.0, 100.0: 30.0}) == 0.316  # best at the lower end
    assert extension({1.0: 30.0, 10.0: 40.0, 100.0: 50.0}) == 316.0  # at the upper end
    assert extension({1.0: 30.0, 10.0: 50.0, 100.0: 40.0}) is None
    assert extension({10.0: 50.0}) is None  # one point: a fixed weight, not a selection
    scores = {1.0: 50.0, 10.0: 40.0, 100.0: 30.0, 0.316: 52.0}
    assert extension(scores) == 0.1
    scores[0.1] = 51.0
    assert extension(scores) is None and is_interior(scores) and best_weight(scores) == 0.316
    assert best_weight({1.0: 50.0, 10.0: 50.0}) == 1.0  # a tie: the weaker constraint
    assert extension({3.0: 50.0, 30.0: 40.0}) == 0.949  # off the half-decade points: a plain factor sqrt(10)


def test_seeds_and_grid_overrides():
    full = M.ALWAYS_ALL_SEEDS + ["snd"]
    assert seeds_of("snd", 3, 1, full) == [0, 1, 2] and seeds_of("pvl", 3, 1, full) == [0]
    assert parse_grid_overrides(["dive=100,1,10"], M.METHODS) == {"dive": (1.0, 10.0, 100.0)}
    for bad in ("dive", "nope=1", "dive=-1", "dive=x"):
        with pytest.raises(ValueError, match="--grid"):
            parse_grid_overrides([bad], M.METHODS)


def test_run_length_per_task():
    assert parse_steps("80") == (80, {}) and parse_steps("80,digits=160") == (80, {"digits": 160})
    assert parse_steps("digits=160, 40") == (40, {"digits": 160})
    for bad in ("", "digits=160", "80,90", "0", "80,digits=x", "80,=5", "eighty"):
        with pytest.raises(ValueError, match="--steps"):
            parse_steps(bad)
    assert steps_note({"a": Recipe(steps=80), "b": Recipe(steps=80)}) == "80 steps"
    assert steps_note({"a": Recipe(steps=80), "b": Recipe(steps=160)}) == "80 steps (a), 160 (b)"


def test_only_selects_by_task_method_and_seed():
    only = parse_only(["method=flyp,dive", "seed=0"])
    job = lambda **tags: Job("j", [], "done", "log", tags={k: set(v) for k, v in tags.items()})  # noqa: E731
    assert selected(job(task={"a"}, method={"dive"}, seed={"0"}), only)
    assert not selected(job(task={"a"}, method={"dive"}, seed={"1"}), only)
    assert not selected(job(method={"dive", "snd"}, seed={"0"}), only)  # an evaluation of runs outside the shard
    assert selected(job(task={"a"}, method={"flyp"}), only)  # the LP head: no seed
    with pytest.raises(DiveUsageError, match="--only"):
        parse_only(["colour=red"])


def test_tasks_of_derives_the_fashion_task_from_an_old_layout():
    old = {"id_name": "fashion-mnist", "id_train": "tr", "id_val": "va", "id_test": "te", "classnames": "c",
           "templates": "t", "ood": {"fashion-mnist-c-snow": "s"}, "zeroshot": {"mnist": "m"},
           "zeroshot_dev": {"mnist": "md"}, "suite": "suite.json", "suite_val": "suite-val.json", "reference": "r"}
    tasks = tasks_of(old)
    assert list(tasks) == ["fashion-mnist"]
    assert tasks["fashion-mnist"]["ood_shift"] == {"fashion-mnist-c-snow": "synthetic"}
    assert tasks["fashion-mnist"]["rsa_data"] == "fashion-mnist"
    assert tasks["fashion-mnist"]["rsa_data_val"] == "fashion-mnist-val"
    new = {**old, "tasks": {"digits": {"id_name": "mnist"}}}
    assert tasks_of(new) == {"digits": {"id_name": "mnist"}}


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_train_command_of_every_registry_method():
    data = {"id_train": "id.tar", "classnames": "c.json", "templates": "t.json", "reference": "ref.tar"}
    recipe = Recipe(steps=40, epochs=4, batch_size=8, eval_max_samples=100)
    expect = {"dive": ["--dive-avl-weight", "--dive-pvl-weight"], "avl": ["--dive-avl-weight"],
              "pvl": ["--dive-pvl-weight"], "snd": ["--dive-avl-weight"], "replay": ["--dive-replay-weight"],
              "cosine": ["--dive-cosine-weight"], "lipsum": ["--dive-lipsum-weight"], "car-ft": ["--dive-car-weight"],
              "flyp": [], "ce": [], "lp-ft": []}
    reference = {"dive", "avl", "pvl", "snd", "replay", "cosine"}
    for method in M.METHODS:
        cmd = train_command("model", data, "out", method, method, recipe, 3.0, "mean", head_init="lp.pt",
                            eval_suite="val.json")
        assert _flag(cmd, "--loss") == method
        assert [f for f in cmd if f.startswith("--dive-") and f.endswith("-weight")] == expect[method], method
        assert all(_flag(cmd, f) == "3" for f in expect[method])
        assert (_flag(cmd, "--dive-ref-data") == "ref.tar") == (method in reference), method
        assert (_flag(cmd, "--dive-reduction") == "mean") == (method in {"dive", "avl", "pvl", "snd"}), method
        assert _flag(cmd, "--epochs") == "4" and _flag(cmd, "--train-num-samples") == "80"  # 10 steps x 8
        assert _flag(cmd, "--save-frequency") == "4"  # only the last epoch's checkpoint
        assert _flag(cmd, "--dive-eval-suite") == "val.json" and _flag(cmd, "--dive-eval-max-samples") == "100"
        assert "--dive-bn-eval" in cmd and "--dive-deterministic" in cmd
    with pytest.raises(ValueError, match="--dive-avl-weight"):
        train_command("model", data, "out", "x", "dive", recipe)  # a weighted loss without its weight


def test_a_finished_run_is_compared_with_the_recipe_that_would_train_it(tmp_path):
    """A work dir of 80-step runs once served a --steps 160 plan as if its runs were 160-step ones."""
    data = {"id_train": "id.tar", "classnames": "c.json", "templates": "t.json", "reference": "ref.tar"}
    cmd = train_command("model", data, "out", "dive-w1-s0", "dive", Recipe(steps=80, epochs=4, batch_size=16), 1.0)
    params = tmp_path / "params.txt"  # as open_clip writes it (other machine's paths, numbers as Python prints them)
    params.write_text("batch_size: 16\ndive_avl_weight: 1.0\ndive_bn_eval: True\ndive_deterministic: True\n"
                      "epochs: 4\nlog_every_n_steps: 4\nloss: dive\nlr: 0.0001\nseed: 0\n"
                      "train_data: /elsewhere/id.tar\ntrain_num_samples: 320\nwarmup: 8\nwd: 0.1\n")
    assert recipe_changes(cmd, str(params)) == []
    longer = train_command("model", data, "out", "dive-w1-s0", "dive", Recipe(steps=160, epochs=4, batch_size=16), 1.0)
    assert recipe_changes(longer, str(params)) == ["--train-num-samples 320 (now 640)"]  # log interval not compared
    other = train_command("model", data, "out", "dive-w1-s0", "dive", Recipe(steps=80, epochs=4, batch_size=16,
                                                                             bn_eval=False, seed=1), 10.0)
    assert recipe_changes(other, str(params)) == ["--seed 0 (now 1)", "--dive-bn-eval True (now False)",
                                                  "--dive-avl-weight 1.0 (now 10)"]


def test_seed_changes_every_random_stream_of_the_trainer():
    """--seed feeds the ID shard/sample order, the prompts, the augmentation and the reference stream (+1)."""
    from open_clip_dive.data import WorkerSeed, sample_seed
    from open_clip_dive.prompts import template_index

    sample = {"__key__": "k", "__url__": "u"}
    assert sample_seed(0, 0, sample) != sample_seed(1, 0, sample)
    assert len({template_index(s, 0, "u", "k", 1000) for s in range(4)}) > 1
    assert WorkerSeed(0)() != WorkerSeed(1)()  # the resampled shard choice (the reference stream's is --seed + 1)


def test_config_names_and_claims_from_rows():
    assert M.Config("t", "dive", 1000.0, "mean", 2).name == "dive-w1000-mean-s2"
    assert M.Config("t", "flyp", seed=1).name == "flyp-s1"

    def row(values):
        return aggregate({s: {"id": v[0], "ood": v[1], "zs": v[2], "rsa": v[3]} for s, v in enumerate(values)})

    rows = {"flyp": row([(80, 60, 20, 0.7), (81, 61, 21, 0.72), (82, 62, 22, 0.74)]),
            "dive": row([(80, 63, 31, 0.9), (81, 64, 32, 0.92), (82, 65, 33, 0.94)]),
            "snd": row([(79, 70, 30, 0.8)])}
    borrow_se(rows)
    assert rows["snd"]["ood"]["borrowed"] and rows["snd"]["ood"]["se"] == pytest.approx(1.0)  # pooled sd 1
    claims = {c["key"]: c for c in judge_claims(rows, {"id": 30.0, "ood": 25.0, "zs": 31.0, "rsa": None})}
    assert claims["ood-gain"]["diff"] == pytest.approx(3.0) and claims["ood-gain"]["verdict"] == HOLDS
    assert claims["id-parity"]["verdict"] == UNSURE  # diff 0 but 2 SE = 1.63 > 1 point
    assert claims["zs-kept"]["diff"] == pytest.approx(1.0) and claims["zs-kept"]["verdict"] == HOLDS  # 1 - 1.15 > -1
    assert claims["order-snd-ood"]["verdict"] == FAILS and claims["order-snd-ood"]["se_borrowed"]
    assert claims["avl-ood"]["verdict"] == UNSURE and claims["avl-ood"]["diff"] is None  # no AVL row


def test_norm_trace_reads_m_and_the_difference_norms(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("x | INFO | Train Epoch: 0 [ 32/320 (10%)] Loss: 1 dive/u_norm: 0.5 dive/u_common: 0.2 "
                   "dive/v_norm: 0.3 dive/v_common: 0.4 dive/ema_norm: 0.01\n"
                   "x | INFO | Train Epoch: 1 [320/320 (100%)] dive/u_norm: 0.6 dive/v_norm: 0.2 dive/ema_norm: 0.2\n")
    trace = norm_trace(str(log), 32)
    assert trace == [{"step": 1, "u_norm": 0.5, "v_norm": 0.3, "ema_norm": 0.01},
                     {"step": 20, "u_norm": 0.6, "v_norm": 0.2, "ema_norm": 0.2}]


def test_a_point_outside_the_frontier_range_is_shown_with_the_frontier_end():
    # FLYP + WiSE-FT from alpha 0 (pre-trained) to 1: ID 80 -> 91.5; a DiVE point at ID 91.7 has no interpolation
    curve = [(0.0, 80.0, 30.0, 0.1, 0.1), (0.5, 89.0, 45.0, 0.1, 0.1), (1.0, 91.5, 49.0, 0.4, 2.3)]
    cell, gap, verdict = outside_range_cells(curve, 91.7)
    assert cell == "— (ID 91.7 outside 80.0–91.5; its end: 49.0 at ID 91.5)"
    assert (gap, verdict) == ("—", "cannot tell")
    assert outside_range_cells([], 91.7) == ["—", "—", "—"]
    assert outside_range_cells(curve, None) == ["—", "—", "—"]


def test_a_killed_sitting_is_counted_up_to_its_last_finished_job(tmp_path):
    def line(**kw):
        return json.dumps(kw) + "\n"

    (tmp_path / "sittings.jsonl").write_text(line(started="2026-12-01T10:00:00", wall_s=600.0, ran=3))
    (tmp_path / "ledger.jsonl").write_text(
        line(job="a", seconds=500, jobs=2, threads=1, finished="2026-12-01T10:09:00", sitting="2026-12-01T10:00:00")
        + line(job="b", seconds=400, jobs=2, threads=1, finished="2026-12-01T11:07:00", sitting="2026-12-01T11:00:00")
        + line(job="c", seconds=700, jobs=2, threads=1, finished="2026-12-01T11:12:30", sitting="2026-12-01T11:00:00")
        + line(job="d", seconds=90, jobs=2, threads=1, finished="2026-12-01T09:00:00"))  # older pipeline: no sitting
    added = fold_interrupted(str(tmp_path))
    assert [(a["started"], a["wall_s"], a["ran"], a["interrupted"]) for a in added] == [
        ("2026-12-01T11:00:00", 750.0, 2, True)]
    assert fold_interrupted(str(tmp_path)) == []  # folded once
    assert [s["wall_s"] for s in read_sittings(str(tmp_path))] == [600.0, 750.0]
    # a sitting folded while it still ran (a --dry-run beside it) that then ended counts once, as ended
    with open(tmp_path / "sittings.jsonl", "a") as f:
        f.write(line(started="2026-12-01T11:00:00", wall_s=900.0, ran=4))
    assert [s["wall_s"] for s in read_sittings(str(tmp_path))] == [600.0, 900.0]
    # a sitting that ran no job (a dry run) is not one: the lines an older pipeline wrote for them are left out
    with open(tmp_path / "sittings.jsonl", "a") as f:
        f.write(line(started="2026-12-01T12:00:00", wall_s=80.0, ran=0, dry_run=True)
                + line(started="2026-12-01T13:00:00", wall_s=90.0, ran=0, dry_run=False))
    assert [s["wall_s"] for s in read_sittings(str(tmp_path))] == [600.0, 900.0]


def test_the_page_names_the_pre_trained_builds_its_jobs_ran_on(tmp_path):
    import hashlib

    from open_clip_dive.default.model import weights_fingerprint

    assert weights_fingerprint(str(tmp_path)) is None  # nothing built there
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"weights" * 1000)
    assert weights_fingerprint(str(tmp_path)) == hashlib.sha256(b"weights" * 1000).hexdigest()[:12]

    same = [{"job": j, "model": "aaaa"} for j in "xyz"]
    assert builds_note(same, "aaaa").endswith("aaaa on this machine; all 3 jobs of the record ran on it.")
    # a record continued on another CPU: both builds with their job counts, and the warning
    mixed = same + [{"job": "w", "model": "bbbb"}, {"job": "v"}]  # v: a ledger line from before builds were kept
    note = builds_note(mixed, "bbbb")
    assert "aaaa (3 jobs), bbbb (1 job), not recorded (1 job," in note and "**The record mixes builds**" in note
    # one build, not this machine's (the record was sat elsewhere): named, no warning
    note = builds_note(same, "cccc")
    assert "cccc on this machine; the record's jobs: aaaa (3 jobs)." in note and "mixes" not in note
