import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_in_readme_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_cli_reference.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_opens_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in text.split("```bash\n")[1:3]]
    assert blocks[0].endswith("pip install -e . && edgecnn run")
    assert blocks[1].endswith('pip install -e ".[dev]" && pytest')
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[dev]"' in ci and "python -m pytest" in ci


def _bench_cifar10():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_cifar10", ROOT / "tools" / "bench_cifar10.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_rewrite_keeps_the_paragraphs_other_tools_measure():
    """tools/bench_cifar10.py --readme rewrites README's Results from its runs; the hand-kept paragraphs on
    docs/train_speed.md and docs/epoch_start.md (other tools' measurements) stay as they are, tables included."""
    bench = _bench_cifar10()
    text = (ROOT / "README.md").read_text()
    block = text.partition(bench.MARKERS[0])[2].partition(bench.MARKERS[1])[0]
    throughput = next(g for g in bench._groups(block) if g[0].startswith("**Training throughput**"))
    kept = "\n".join(bench.other_tools_paragraphs(block))
    assert "\n\n".join(throughput) in kept and "**Epoch starts**" in kept
    # --update with one preset's paragraph: everything else, the throughput paragraph first, is left alone
    new = "\n".join([bench.MARKERS[0], "intro", "", "**`edgecnn train --preset resnet8`**: 99.99% float.", "",
                     bench.MARKERS[1]])
    updated = bench.update_readme(bench.MARKERS[0] + block + bench.MARKERS[1], new)
    assert "\n\n".join(throughput) in updated and "99.99% float" in updated
    assert updated.count("| architecture | variant |") == block.count("| architecture | variant |") == 1
    # a README without them gets each doc's caption and its first table only (docs/train_speed.md has several)
    fresh = bench.other_tools_paragraphs("")
    first = (ROOT / "docs" / "train_speed.md").read_text().split("\n\n## ")[0]
    assert fresh[0].startswith("**Training throughput**") and [ln for ln in fresh if ln.startswith("|")][:3] == \
        [ln for ln in first.splitlines() if ln.startswith("|")][:3]
    assert sum(ln.startswith("| architecture |") for ln in fresh) == 1


def test_add_row_fills_the_int8_column_and_pads_an_older_table(tmp_path):
    """--add-row: a run with a benchmark gets its int8 TFLite accuracy; a table from before that column existed
    gains the header and its old rows say "-" there (a "\\|" inside a command is not a cell border)."""
    import json

    bench = _bench_cifar10()
    doc = tmp_path / "benchmarks.md"
    old_row = ('| old | `edgecnn train --arch "C: 8 gap \\| L2: 1e-4"` | nearest | repeated | 3 | 1.0 min | 0% '
               '| 50.00% |')
    doc.write_text("# doc\n\n## Other recipes tried\n\n"
                   "| run | command | translation | iterator | epochs | training | CPU steal | test accuracy |\n"
                   "|---|---|---|---|---:|---:|---:|---:|\n" + old_row + "\n\n## after\n\ntext\n")
    run = tmp_path / "r8-s1"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": "cifar10", "arch": "resnet8", "epochs": 90, "seed": 1,
                                                 "augment": "light", "precision": "auto",
                                                 "precision_used": "mixed_bfloat16"}))
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.853, "epochs_run": 86, "train_seconds": 1740.5}))
    (run / "benchmark.json").write_text(json.dumps({"rows": [
        {"name": "tflite-float32", "status": "ok", "accuracy": 0.853},
        {"name": "tflite-int8", "status": "ok", "accuracy": 0.8504}]}))
    bench.add_rows(doc, [run])
    lines = doc.read_text().splitlines()
    head = lines.index(bench.ALSO_HEAD[0])
    assert lines[head - 2] == bench.ALSO_NOTE and lines[head + 1] == bench.ALSO_HEAD[1]
    assert lines[head + 2] == old_row + " - |"
    new = lines[head + 3]
    assert new.startswith("| r8-s1 |") and new.endswith("| 85.30% | 85.04% |") and "--seed 1" in new
    assert "--precision mixed_bfloat16" in new and lines[head + 4:] == ["", "## after", "", "text"]
    # once migrated, adding the run again replaces its row and leaves the table's shape alone
    (run / "benchmark.json").unlink()
    bench.add_rows(doc, [run])
    again = doc.read_text().splitlines()
    assert again.count(bench.ALSO_HEAD[0]) == 1 and again.count(bench.ALSO_NOTE) == 1
    assert again[head + 3].endswith("| 85.30% | - |") and len(again) == len(lines)


def test_a_row_names_the_data_as_the_tool_was_given_it_where_the_run_used_that_file(tmp_path):
    """--add-row/--also: a run trained on the file the tool's --data names shows that (relative) path, so the
    document does not carry the absolute path of the machine that trained it; another file is shown as recorded."""
    import json

    bench = _bench_cifar10()
    data = tmp_path / "data" / "cifar10-jpg.tar.gz"
    data.parent.mkdir()
    data.write_bytes(b"archive")
    run = tmp_path / "runs" / "c10-x"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": str(data), "arch": "cifar10", "epochs": 45}))
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.87, "epochs_run": 45, "train_seconds": 1170}))
    relative = os.path.relpath(data)
    assert f"`edgecnn train --data {relative} --arch" in bench._also_row(run, relative)
    assert f"`edgecnn train --data {data} --arch" in bench._also_row(run)
    other = tmp_path / "other.tar.gz"
    other.write_bytes(b"archive")
    assert f"`edgecnn train --data {data} --arch" in bench._also_row(run, str(other))
    assert f"`edgecnn train --data {data} --arch" in bench._also_row(run, "cifar10")  # not a file: as recorded
    # a relative path as typed where `edgecnn train` ran, the folder above runs/ (not this test's directory)
    (run / "config.json").write_text(json.dumps({"data": "data/cifar10-jpg.tar.gz", "arch": "cifar10"}))
    assert f"`edgecnn train --data {relative} --arch" in bench._also_row(run, relative)
    assert "`edgecnn train --data data/cifar10-jpg.tar.gz --arch" in bench._also_row(run, str(other))
    # a run that recorded the absolute path too (data_path) is matched by it, wherever its runs folder is now
    moved = tmp_path / "elsewhere" / "runs" / "c10-x"
    shutil.copytree(run, moved)
    (moved / "config.json").write_text(json.dumps({"data": "data/cifar10-jpg.tar.gz", "data_path": str(data),
                                                   "arch": "cifar10"}))
    assert f"`edgecnn train --data {relative} --arch" in bench._also_row(moved, relative)


def test_a_distilled_run_s_row_names_its_teacher(tmp_path):
    import json

    run = tmp_path / "r8-kd"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": "cifar10", "arch": "resnet8", "epochs": 20,
                                                 "teacher": "teacher-c10", "distill_weight": 0.9,
                                                 "distill_temperature": 4.0}))
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.83, "epochs_run": 20, "train_seconds": 700}))
    assert "--epochs 20 --teacher teacher-c10 --distill-weight 0.9 --distill-temperature 4.0`" in \
        _bench_cifar10()._also_row(run)


def test_a_row_names_the_translate_fill_only_where_it_is_not_the_default(tmp_path):
    import json

    bench = _bench_cifar10()
    run = tmp_path / "c10-fill"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.87, "epochs_run": 50, "train_seconds": 1170}))
    for fill, shown in (("reflect", " --translate-fill reflect"), ("nearest", None)):
        (run / "config.json").write_text(json.dumps({"data": "cifar10", "arch": "cifar10", "epochs": 60,
                                                     "augment": "light", "translate_fill": fill}))
        row = bench._also_row(run)
        assert (shown in row) if shown else "--translate-fill" not in row
