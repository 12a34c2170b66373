"""Per-group metrics on real pooled digits (MNIST + UCI Semeion, the source being the group)."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from train.analysis import fairness
from train.data import DataError, Dataset, load_dataset, stratified_sample, write_kaggle_csv
from train.fairness import main as fairness_main
from train.runs import load_run

N_MNIST, N_SEMEION = 300, 250


@pytest.fixture(scope="module")
def pooled(mnist_test, shared_data, tmp_path_factory) -> dict:
    """A Kaggle CSV with a ``source`` column, the same rows without it, and the sources in order."""
    parts = {"mnist": stratified_sample(mnist_test, N_MNIST, seed=0),
             "semeion": stratified_sample(load_dataset(str(shared_data / "semeion" / "semeion.data")), N_SEMEION,
                                          seed=0)}
    frames = []
    for name, ds in parts.items():
        frame = pd.DataFrame(ds.x.reshape(len(ds), -1), columns=[f"pixel{i}" for i in range(784)])
        frame.insert(0, "label", ds.y)
        frame["source"] = name
        frames.append(frame)
    root = tmp_path_factory.mktemp("pooled")
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(root / "pooled.csv", index=False)
    plain = Dataset(np.concatenate([p.x for p in parts.values()]), np.concatenate([p.y for p in parts.values()]),
                    parts["mnist"].class_names, "pooled")
    return {"csv": root / "pooled.csv", "plain_csv": write_kaggle_csv(plain, root / "plain.csv"),
            "sources": table["source"].to_numpy(), "root": root}


@pytest.fixture()
def run(small_run, tmp_path):
    """A copy of the small LeNet-5 run with its report, so analyses can be added to it."""
    from train.report import evaluate_run

    shutil.copytree(small_run, tmp_path / "run")
    evaluate_run(tmp_path / "run", timing=False)
    return tmp_path / "run"


def test_loader_keeps_a_named_group_column(pooled, shared_data):
    ds = load_dataset(pooled["csv"], group_column="source")
    assert ds.groups.tolist() == pooled["sources"].tolist() and len(ds) == N_MNIST + N_SEMEION
    with pytest.raises(DataError, match=r"no column 'writer'; the columns are 'label', 'source', pixel0\.\.pixel783"):
        load_dataset(pooled["csv"], group_column="writer")
    with pytest.raises(DataError, match="unexpected column 'source'.*group_column="):
        load_dataset(pooled["csv"])
    with pytest.raises(DataError, match="applies to a Kaggle-style CSV"):
        load_dataset(str(shared_data / "semeion" / "semeion.data"), group_column="source")


def test_per_group_metrics_equal_sklearn_on_each_subset(run, pooled):
    result = fairness.evaluate_fairness(run, str(pooled["csv"]), "source")
    ds = load_dataset(pooled["csv"], group_column="source")
    pred = load_run(run).model.predict(ds.x.astype(np.float32), verbose=0).argmax(1)
    assert result["groups"] == ["mnist", "semeion"]
    for g in result["groups"]:
        m = ds.groups == g
        row = result["by_group"][g]
        assert row["count"] == m.sum()
        assert row["accuracy"] == pytest.approx(accuracy_score(ds.y[m], pred[m]))
        assert row["error_rate"] == pytest.approx(1 - accuracy_score(ds.y[m], pred[m]))
        assert row["f1_macro"] == pytest.approx(f1_score(ds.y[m], pred[m], average="macro"))
        recalls = recall_score(ds.y[m], pred[m], labels=range(10), average=None)
        assert list(result["recall_by_class"][g].values()) == pytest.approx(recalls)
        assert result["confusion_matrix"][g] == confusion_matrix(ds.y[m], pred[m], labels=range(10)).tolist()
    assert result["overall"]["accuracy"] == pytest.approx(accuracy_score(ds.y, pred))
    accs = {g: result["by_group"][g]["accuracy"] for g in result["groups"]}
    gap = result["gaps"]["accuracy"]
    assert gap["difference"] == pytest.approx(max(accs.values()) - min(accs.values()))
    assert gap["ratio"] == pytest.approx(min(accs.values()) / max(accs.values()))
    assert gap["min_group"] == min(accs, key=accs.get) and gap["max_group"] == max(accs, key=accs.get)
    # A model trained on MNIST alone does worse on the other writers and scanner.
    assert gap["min_group"] == "semeion" and gap["difference"] > 0.02

    report = (run / "report.html").read_text()
    assert "<!-- analysis:fairness -->" in report and "Fairness: metrics per group" in report
    assert report.count('alt="confusion ') == 2  # one confusion matrix per group
    stored = json.loads((run / "analysis" / "fairness.json").read_text())["data"]
    assert stored["by_group"] == result["by_group"]


def test_side_files_agree_with_the_column(run, pooled):
    by_column = fairness.evaluate_fairness(run, str(pooled["csv"]), "source")
    root, sources = pooled["root"], pooled["sources"]
    order = np.random.default_rng(0).permutation(len(sources))
    pd.DataFrame({"index": order, "group": sources[order]}).to_csv(root / "indexed.csv", index=False)
    pd.DataFrame({"group": sources}).to_csv(root / "ordered.csv", index=False)
    (root / "groups.txt").write_text("\n".join(sources) + "\n")
    np.save(root / "groups.npy", sources.astype(str))
    for side in ("indexed.csv", "ordered.csv", "groups.txt", "groups.npy"):
        by_file = fairness.evaluate_fairness(run, str(pooled["plain_csv"]), str(root / side))
        assert by_file["by_group"] == by_column["by_group"], side
        assert by_file["gaps"] == by_column["gaps"], side
        assert by_file["confusion_matrix"] == by_column["confusion_matrix"], side


def test_bad_input_gives_clear_errors_and_exit_codes(run, pooled, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("\n".join(pooled["sources"][:-5]) + "\n")
    n = N_MNIST + N_SEMEION
    with pytest.raises(ValueError, match=rf"{n - 5} group entries, but .* has {n} samples"):
        fairness.evaluate_fairness(run, str(pooled["plain_csv"]), str(short))

    def cli(data, groups):
        code = fairness_main(["--run", str(run), "--data", str(pooled[data]), "--groups", str(groups)])
        return code, capsys.readouterr()

    code, out = cli("csv", "writer")
    assert code == 5 and "no column 'writer'" in out.err and "'source'" in out.err
    code, out = cli("plain_csv", short)
    assert code == 5 and f"{n - 5} group entries" in out.err and f"{n} samples" in out.err
    code, out = cli("plain_csv", tmp_path / "absent.csv")
    assert code == 5 and "group file not found" in out.err
    bad = tmp_path / "bad.csv"
    bad.write_text("sample,team\n" + "0,a\n" * n)
    code, out = cli("plain_csv", bad)
    assert code == 5 and "no 'group' column" in out.err and "'team'" in out.err
    code = fairness_main(["--run", str(tmp_path / "nope"), "--data", str(pooled["csv"]), "--groups", "source"])
    assert code == 6 and "run directory not found" in capsys.readouterr().err
    code, out = cli("csv", "source")
    assert code == 0 and "semeion" in out.out and "largest gap" in out.out


def test_small_groups_are_warned(caplog):
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    pred = np.array([0, 1, 0, 0, 1, 1, 1, 1])
    groups = np.array(["a", "a", "a", "b", "b", "b", "b", "b"])
    with caplog.at_level(logging.WARNING, logger="train.analysis.fairness"):
        result = fairness.group_metrics(y, pred, groups, ["0", "1"], min_group_size=4)
    assert result["small_groups"] == ["a"]
    assert "group 'a' has 3 samples (fewer than 4)" in caplog.text
    assert result["by_group"]["a"]["accuracy"] == pytest.approx(2 / 3)
    assert result["gaps"]["accuracy"]["difference"] == pytest.approx(0.8 - 2 / 3)
