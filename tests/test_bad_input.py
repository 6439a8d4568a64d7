"""Bad input stops before training with one clear line naming the flag or file; corrupt samples are skipped."""

import json
import os

import pytest

from helpers import TINY_MODEL, write_shards
from open_clip_dive.main import main

pytestmark = pytest.mark.timeout(300)


def run(tiny_data, tmp_path, capsys, *extra, train_data=None, classnames=None, name="bad"):
    argv = ["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL,
            "--train-data", train_data or tiny_data["id"], "--classnames", classnames or tiny_data["classnames"],
            "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--logs", str(tmp_path), "--name", name, "--report-to", "none", *extra]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


@pytest.mark.parametrize("extra, message", [
    (["--loss", "dive"], "--loss dive trains on reference pairs: give them with --dive-ref-data"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-avl-weight", "-1"], "--dive-avl-weight: must be >= 0"),
    (["--loss", "pvl", "--dive-ref-data", "REF", "--dive-pvl-weight", "-0.5"], "--dive-pvl-weight: must be >= 0"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ema-momentum", "1"], "--dive-ema-momentum: must be in [0, 1)"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ema-momentum", "-0.1"], "--dive-ema-momentum"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ref-batch-size", "0"], "--dive-ref-batch-size: must be >= 1"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--accum-freq", "2", "--horovod"],
     "--accum-freq 2 with --horovod: open_clip builds Horovod's optimizer for one backward per step"),
    (["--loss", "dive", "--dive-ref-data", "/nonexistent/ref-{000..003}.tar"],
     "--dive-ref-data: shard '/nonexistent/ref-000.tar' does not exist (4 of 4 missing)"),
    (["--loss", "dvie"], "--loss: unknown loss 'dvie'. Did you mean dive"),
    (["--loss", "flyp", "--templates", "/nonexistent/t.json"], "--templates: template file '/nonexistent/t.json' does not exist"),
    # non-finite numbers: nan passed every range check (dropping AVL), inf trained a NaN model
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-avl-weight", "nan"], "--dive-avl-weight: must be a finite number, got nan"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-avl-weight", "inf"], "--dive-avl-weight: must be a finite number, got inf"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-pvl-weight", "inf"], "--dive-pvl-weight: must be a finite number, got inf"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-pvl-weight", "nan"], "--dive-pvl-weight: must be a finite number, got nan"),
    (["--loss", "replay", "--dive-ref-data", "REF", "--dive-replay-weight", "inf"], "--dive-replay-weight: must be a finite number"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ema-momentum", "nan"], "--dive-ema-momentum"),
    # the plugin's own flags that used to end in a traceback
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-preempt-signals", "KILL"],
     "--dive-preempt-signals: SIGKILL cannot be caught, so it cannot trigger a checkpoint"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-preempt-signals", "USR1,STOP"],
     "--dive-preempt-signals: SIGSTOP cannot be caught"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-preempt-signals", "TERM,"], "--dive-preempt-signals: unknown signal ''"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ref-workers", "-1"], "--dive-ref-workers: must be >= 0, got -1"),
    (["--loss", "flyp", "--train-num-samples", "0"], "--train-num-samples: must be >= 1, got 0"),
    (["--loss", "flyp", "--train-num-samples", "-5"], "--train-num-samples: must be >= 1, got -5"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ref-num-samples", "0"], "--dive-ref-num-samples: must be >= 1"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ref-batch-size", "-3"], "--dive-ref-batch-size: must be >= 1"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ema-momentum", "inf"], "--dive-ema-momentum: must be in [0, 1)"),
    (["--loss", "replay", "--dive-ref-data", "REF", "--dive-replay-weight", "nan"], "--dive-replay-weight: must be a finite number"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-preempt-signals", "FOO"], "--dive-preempt-signals: unknown signal 'FOO'"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ref-cache", "/nonexistent/cache"],
     "--dive-ref-cache: '/nonexistent/cache' has no meta.json"),
    (["--loss", "flyp", "--dive-model-config", "/nonexistent/m.json"], "--dive-model-config: '/nonexistent/m.json' does not exist"),
    (["--loss", "snd"], "--loss snd trains on reference pairs: give them with --dive-ref-data"),
    (["--loss", "flyp", "--classnames", "/nonexistent/names.json"], "--classnames: class-name file '/nonexistent/names.json' does not exist"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--no-dive-ref-resampled", "--dive-ref-batch-size", "33"],
     "--dive-ref-data: its 32 samples (sizes.json) are fewer than one batch of --dive-ref-batch-size 33"),
])
def test_flag_errors(tiny_data, tmp_path, capsys, extra, message):
    extra = [tiny_data["ref"] if e == "REF" else e for e in extra]
    code, line = run(tiny_data, tmp_path, capsys, *extra)
    assert code == 2
    assert line.startswith("open_clip_dive: error: ") and message in line
    assert not (tmp_path / "bad" / "checkpoints" / "epoch_1.pt").exists()


def test_missing_train_shards(tiny_data, tmp_path, capsys):
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", train_data=str(tmp_path / "x-{0..1}.tar"))
    assert code == 2 and "--train-data: shard" in line and "does not exist" in line


def test_shard_without_labels(tiny_data, tmp_path, capsys):
    shards = write_shards(str(tmp_path / "nolabel"), "nl", 1, 8, with_cls=False, with_txt=True)
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", train_data=shards)
    assert code == 2 and "has no 'cls' class label (it has 'txt': drop --classnames" in line


def test_reference_shard_without_captions(tiny_data, tmp_path, capsys):
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "dive", "--dive-ref-data", tiny_data["id"])
    assert code == 2 and "--dive-ref-data: sample" in line and "needs an image and a 'txt' caption" in line


def test_class_index_out_of_range(tiny_data, tmp_path, capsys):
    names = tmp_path / "two.json"
    names.write_text(json.dumps(["red", "green"]))
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", classnames=str(names))
    assert code == 2 and "is out of range of the 2 names in --classnames" in line


def test_corrupt_sample_is_skipped_and_counted(tiny_data, tmp_path, capsys, caplog):
    shards = write_shards(str(tmp_path / "corrupt"), "c", 1, 16, num_classes=4,
                          extra=lambda s, j, label: {"png": b"not a png"} if j == 3 else {})
    code, _ = run(tiny_data, tmp_path, capsys, "--loss", "flyp", "--train-num-samples", "16", train_data=shards,
                  name="corrupt")
    assert code == 0
    log = (tmp_path / "corrupt" / "out.log").read_text()
    assert "Skipping a corrupt sample" in log and "1 skipped so far" in log


@pytest.mark.parametrize("content, message", [
    ('{"0": "red", "1": "green", "5": "blue", "3": "yellow"}',
     "must be the class indices 0..3, but index 2 is missing"),
    ('{"0": "red", "00": "green"}', "must be the class indices 0..1, but an index appears twice"),
    ('["red", "", "blue"]', "entry 1 of '{path}' is \"\"; every class-name entry must be a non-blank string"),
    ('["red", ["green", "lime"], "blue"]', "entry 1 of '{path}' is [\"green\", \"lime\"]"),
    ('{"0": "red", "1": {"name": "green"}}', "entry 1 of '{path}' is {\"name\": \"green\"}"),
    ('{"classnames": ["red", "  "]}', "entry 1 of '{path}' is \"  \""),
    ("red\n\ngreen\nblue\n", "line 2 of '{path}' is blank; every line is one class-name entry"),
])
def test_class_name_files_that_would_prompt_the_wrong_names(tiny_data, tmp_path, capsys, content, message):
    """A gap renumbered the classes (label 2 prompted with class 5's name); blank and nested names were taken."""
    path = tmp_path / ("names.txt" if content.startswith("red") else "names.json")
    path.write_text(content)
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", classnames=str(path))
    assert code == 2
    assert line.startswith(f"open_clip_dive: error: --classnames: ") and message.replace("{path}", str(path)) in line, line


def test_class_name_file_with_a_trailing_newline_and_a_complete_dict_is_fine(tmp_path):
    from open_clip_dive.prompts import load_classnames

    (tmp_path / "a.txt").write_text("red\ngreen\n\n")
    (tmp_path / "b.json").write_text('{"1": "green", "0": "red"}')
    assert load_classnames(str(tmp_path / "a.txt")) == load_classnames(str(tmp_path / "b.json")) == ["red", "green"]


def test_duplicate_class_names_are_warned(tiny_data, tmp_path, capsys, caplog):
    path = tmp_path / "dup.json"
    path.write_text('["red", "green", "Red", "blue"]')
    code, _ = run(tiny_data, tmp_path, capsys, "--loss", "flyp", "--train-num-samples", "8", classnames=str(path),
                  name="dup")
    assert code == 0
    warned = [r.getMessage() for r in caplog.records if "more than once" in r.getMessage()]
    assert warned == [f"--classnames {path}: 1 class name(s) appear more than once ('red' at [0, 2]); their classes "
                      "get the same prompts and cannot be told apart"]


def _text(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def _truncated_checkpoint(tmp_path):
    import torch

    whole = tmp_path / "whole.pt"
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(1000)}}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:2000])
    return str(cut)


def _other_models_checkpoint(tmp_path):
    import torch

    path = tmp_path / "other.pt"
    torch.save({"epoch": 1, "state_dict": {"visual.proj": torch.zeros(3, 3)}}, path)
    return str(path)


# (what to make in tmp_path -> extra flags, the line expected); every case stops with exit 2 and one line
FILE_CASES = {
    "resume missing": (lambda t, d: ["--resume", str(t / "nope.pt")], "--resume: '{t}/nope.pt' does not exist"),
    "resume directory": (lambda t, d: ["--resume", str(t)], "--resume: '{t}' is a directory; give a checkpoint file"),
    "resume text file": (lambda t, d: ["--resume", _text(t, "notes.txt", "hello")],
                         "--resume: '{t}/notes.txt' is not a complete torch checkpoint"),
    "resume a shard": (lambda t, d: ["--resume", d["id"].replace("{000000..000001}", "000000")],
                       "is not a complete torch checkpoint (truncated, or not a .pt file)"),
    "resume truncated": (lambda t, d: ["--resume", _truncated_checkpoint(t)],
                         "--resume: '{t}/cut.pt' is not a complete torch checkpoint"),
    "resume other model": (lambda t, d: ["--resume", _other_models_checkpoint(t)],
                           "--resume: '{t}/other.pt' is a checkpoint of another model: "),
    "model config not json": (lambda t, d: ["--dive-model-config", _text(t, "m.json", "{embed_dim: 3")],
                              "--dive-model-config: '{t}/m.json' is not valid JSON"),
    "model config not a config": (lambda t, d: ["--dive-model-config", _text(t, "m.json", '{"a": 1}')],
                                  "--dive-model-config: '{t}/m.json' is not an open_clip model config"),
    "ref cache meta not json": (lambda t, d: ["--loss", "dive", "--dive-ref-data", d["ref"], "--dive-ref-cache",
                                              os.path.dirname(_text(t, "meta.json", "{oops"))],
                                "--dive-ref-cache: '{t}/meta.json' is not valid JSON"),
    "logs under a file": (lambda t, d: ["--logs", os.path.join(_text(t, "afile", "x"), "logs")],
                          "--logs: '{t}/afile' is a file, so"),
    "templates without a placeholder": (lambda t, d: ["--templates", _text(t, "t.txt", "a photo\n")],
                                        "--templates: '{t}/t.txt': template 'a photo' has no "),
    "empty first shard": (lambda t, d: ["--train-data", _text(t, "empty-0.tar", "")],
                          "shard '{t}/empty-0.tar' is not a readable tar file (file could not be opened successfully"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_files(tiny_data, tmp_path, capsys, case):
    make, message = FILE_CASES[case]
    extra = make(tmp_path, tiny_data)
    if "--loss" not in extra:
        extra += ["--loss", "flyp"]
    if "--train-data" in extra:
        i = extra.index("--train-data")
        code, line = run(tiny_data, tmp_path, capsys, *extra[:i], *extra[i + 2:], train_data=extra[i + 1])
    else:
        code, line = run(tiny_data, tmp_path, capsys, *extra)
    assert code == 2, line
    assert line.startswith("open_clip_dive: error: ") and message.format(t=tmp_path) in line, line
    assert "\n" not in line and "- method" not in line


def test_resume_latest_falls_back_from_a_truncated_epoch_latest(tiny_data, tmp_path, capsys):
    code, _ = run(tiny_data, tmp_path, capsys, "--loss", "flyp", "--save-most-recent", "--train-num-samples", "8",
                  name="latest")
    assert code == 0
    checkpoints = tmp_path / "latest" / "checkpoints"
    latest = checkpoints / "epoch_latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # killed mid-write by a plain (non-atomic) save
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", "--save-most-recent", "--train-num-samples", "8",
                     "--resume", "latest", "--epochs", "2", name="latest")
    assert code == 0, line
    log = (tmp_path / "latest" / "out.log").read_text()
    assert f"resuming from {checkpoints / 'epoch_1.pt'} instead" in log
    assert (checkpoints / "epoch_2.pt").exists()


# --- the evaluator and the shard writer: one line, exit 2, before any work -------------------------------------
def _npz(tmp_path):
    import numpy as np

    path = tmp_path / "a.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(4))
    return str(path)


MAKE_SHARDS_CASES = {
    "output is a file": (lambda t: ["arrays", _npz(t), "--output", _text(t, "afile", "x")],
                         "make_shards: error: --output: '{t}/afile' is a file; give a directory"),
    "output under a file": (lambda t: ["arrays", _npz(t), "--output", os.path.join(_text(t, "afile", "x"), "sub")],
                            "make_shards: error: --output: '{t}/afile' is a file, so '{t}/afile/sub' cannot be made"),
    "output cannot be made": (lambda t: ["arrays", _npz(t), "--output", "/proc/no/such"],
                              "make_shards: error: --output: cannot write to '/proc/no/such'"),
    "arrays not an npz": (lambda t: ["arrays", _text(t, "notes.npz", "hello"), "--output", str(t / "out")],
                          "make_shards: error: {t}/notes.npz is not a NumPy .npz archive; write one with numpy.savez"),
}


@pytest.mark.parametrize("case", sorted(MAKE_SHARDS_CASES))
def test_make_shards_bad_paths(tmp_path, capsys, case):
    from open_clip_dive.tools.make_shards import main as make_shards

    make, message = MAKE_SHARDS_CASES[case]
    code = make_shards(make(tmp_path) + ["--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[-1].startswith(message.format(t=tmp_path)), err


def test_evaluate_refuses_an_unwritable_output_dir_before_evaluating(tiny_data, tmp_path, capsys):
    from open_clip_dive.evaluate.cli import main as evaluate

    code = evaluate(["--model", TINY_MODEL, "--model-config", tiny_data["config"], "--workers", "0", "--no-progress",
                     "--dataset", f"id:x={os.path.dirname(tiny_data['id'])}", "--output-dir",
                     os.path.join(_text(tmp_path, "afile", "x"), "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (f"error: --output-dir: '{tmp_path}/afile' is a file, so '{tmp_path}/afile/out' "
                                     "cannot be made; give a directory"), err


def test_shards_that_do_not_split_over_the_ranks_are_refused_before_the_model_is_built(tiny_data, tmp_path, capsys,
                                                                                      monkeypatch):
    """torchrun's WORLD_SIZE is known at startup; this used to be found after the model and optimizer were built."""
    shards = write_shards(str(tmp_path / "three"), "t", 3, 8, num_classes=4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", train_data=shards)
    assert code == 2
    assert line == ("open_clip_dive: error: --train-data: 3 shards do not split evenly over 2 ranks; reshard to a "
                    "multiple of the world size or use resampling (--dataset-resampled)")
    assert not (tmp_path / "bad").exists()  # before open_clip made the run folder, let alone the model


class _Writes:
    """A stderr that keeps each write() apart, as an unbuffered stream (`python -u`, PYTHONUNBUFFERED) does."""

    def __init__(self):
        self.chunks = []

    def write(self, text):
        self.chunks.append(text)
        return len(text)

    def flush(self):
        pass


def test_the_error_line_is_one_write_so_ranks_cannot_interleave(tiny_data, tmp_path, monkeypatch):
    # two ranks stopping together once printed 'open_clip_dive: error: <rank 0>open_clip_dive: error: <rank 1>'
    # on one line: print() wrote each message and its newline separately to the shared, unbuffered stderr
    stderr = _Writes()
    monkeypatch.setattr("sys.stderr", stderr)
    assert main(["--loss", "dvie", "--train-data", tiny_data["id"], "--logs", str(tmp_path), "--report-to", "none"]) == 2
    lines = [c for c in stderr.chunks if "open_clip_dive: error:" in c]
    assert len(lines) == 1 and lines[0].startswith("open_clip_dive: error: --loss: unknown loss 'dvie'")
    assert lines[0].endswith("\n") and lines[0].count("\n") == 1
