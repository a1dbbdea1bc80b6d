import json

import pytest

from edgecnn.errors import EdgeCNNError
from edgecnn.sweep import candidates, expand_grid, pareto, stability, sweep
from edgecnn.train import TrainConfig


def test_grid_expansion_and_dedup():
    specs = expand_grid("widths=8,16;dense=0,32;dropout=0.25;bn=on,off")
    assert len(specs) == 8 and "C: 8n 8n d0.25 16n 16n d0.25" in specs and "C: 16 16 d0.25 32 32 d0.25 | D: 32" in specs
    assert len(candidates(["C: 8n 8n 16n 16n"], [], "widths=8")) == 1  # the same network once
    with pytest.raises(EdgeCNNError, match="--grid"):
        expand_grid("depth=3")
    with pytest.raises(EdgeCNNError, match="--preset"):
        candidates([], ["vgg16"], None)


def test_stability_and_pareto_on_hand_made_rows():
    s = stability([{"val_accuracy": v} for v in (0.5, 0.7, 0.6, 0.8)])
    assert s["best_val_acc"] == 0.8 and s["worst_val_drop"] == pytest.approx(0.1)
    rows = [{"status": "ok", "int8_acc": 0.9, "int8_kb": 100}, {"status": "ok", "int8_acc": 0.8, "int8_kb": 50},
            {"status": "ok", "int8_acc": 0.8, "int8_kb": 120}]
    pareto(rows)
    assert [r["pareto"] for r in rows] == [True, True, False]


@pytest.mark.slow
def test_two_candidate_sweep_names_a_winner_and_resumes(tmp_path):
    cfg = TrainConfig(data="shapes:400", image_size=16, epochs=2, batch_size=32, augment="none")
    archs = ["C: 4n 8n gap", "C: 8n 16n gap", "C: 4 p 4 p 4 p 4 p 4 p"]  # pools 5 times: too many for 16x16
    rows, winner = sweep("t", archs, [], None, 0.0, cfg, str(tmp_path), log=lambda m: None)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2 and winner is min(ok, key=lambda r: r["int8_kb"])
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "halves the image" in failed[0]["error"]
    root = tmp_path / "t"
    for f in ("sweep.json", "sweep.csv", "sweep.md", "pareto.png"):
        assert (root / f).is_file()
    assert json.loads((root / "sweep.json").read_text())["winner"] == winner["candidate"]
    assert (root / "runs" / winner["candidate"] / "exports" / "model_int8.tflite").is_file()
    logs = []
    rows2, winner2 = sweep("t", archs, [], None, 0.0, cfg, str(tmp_path), log=logs.append)
    assert sum("done before" in m for m in logs) == 2 and winner2["candidate"] == winner["candidate"]
