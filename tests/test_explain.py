"""Grad-CAM and saliency on a real LeNet-5 trained on MNIST: shape, range, and heat on the ink."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from train.analysis import explain
from train.explain import main as explain_main
from train.runs import load_run

N = 200


@pytest.fixture(scope="module")
def model(small_run):
    return load_run(small_run).model


@pytest.fixture(scope="module")
def digits(mnist_test):
    return mnist_test.x[:N]


@pytest.fixture(scope="module")
def cams(model, digits):
    return explain.grad_cam(model, digits)


def ink_share(maps: np.ndarray, digits: np.ndarray) -> float:
    """Mean share of each map's heat inside the digit's ink, dilated by 2 pixels."""
    ink = (digits[..., 0] > 0).astype(np.uint8)
    mask = np.stack([cv2.dilate(i, np.ones((5, 5), np.uint8)) for i in ink]).astype(bool)
    return float(np.mean((maps * mask).sum(axis=(1, 2)) / maps.sum(axis=(1, 2)).clip(1e-12)))


def test_gradcam_maps_are_normalised_heatmaps_at_input_size(cams):
    assert cams.shape == (N, 28, 28) and cams.dtype == np.float32
    assert cams.min() >= 0
    peaks = cams.reshape(N, -1).max(axis=1)
    # Each map is scaled to a peak of 1; ReLU can leave a map all zero when no evidence is positive.
    assert np.all((peaks == 1) | (peaks == 0))
    assert np.mean(cams.reshape(N, -1).std(axis=1) > 0) >= 0.95


def test_heat_falls_on_the_ink_and_a_random_map_fails_the_same_check(model, digits, cams):
    random = np.random.default_rng(0).random(cams.shape).astype(np.float32)
    assert ink_share(random, digits) < 0.5  # the dilated ink covers about 40% of an MNIST image
    assert ink_share(np.ones_like(cams), digits) < 0.5
    assert ink_share(cams, digits) > 0.55
    sal = explain.saliency(model, digits)
    assert sal.shape == (N, 28, 28) and sal.min() >= 0 and sal.max() == 1
    assert ink_share(sal, digits) > 0.5
    smooth = explain.saliency(model, digits[:20], smoothgrad=8)
    assert ink_share(smooth, digits[:20]) > 0.5


def test_gradcam_follows_the_class_asked_for(model, mnist_test):
    one = mnist_test.x[np.flatnonzero(mnist_test.y == 1)[:1]]
    assert not np.allclose(explain.grad_cam(model, one, 1), explain.grad_cam(model, one, 8))


def test_layer_choice_and_unknown_layer(model, digits):
    from train.models import create_model

    assert explain.find_layer(model).name == "conv2"
    assert explain.conv_layer_names(model) == ["conv1", "conv2"]
    # resnet_small: the last convolution is followed through BN, the residual add and ReLU.
    assert explain.find_layer(create_model("resnet_small", input_shape=(28, 28, 1), num_classes=10)).name == "s3b2_out"
    fine = explain.grad_cam(model, digits[:8], layer="conv1")
    assert fine.shape == (8, 28, 28) and fine.max() == 1
    with pytest.raises(ValueError, match=r"no layer 'conv3'.*conv1, conv2"):
        explain.grad_cam(model, digits[:2], layer="conv3")
    with pytest.raises(ValueError, match=r"'fc1' outputs .*conv1, conv2"):
        explain.find_layer(model, "fc1")


def test_galleries_pick_correct_by_class_and_confident_mistakes():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0, 2]] * 0.5 + 0.1
    probs[1, 1], probs[5, 0] = 0.7, 0.9
    assert explain.misclassified(y, probs, 5).tolist() == [5, 1]  # most confident mistake first
    picked = explain.correct_by_class(y, probs, 3)
    assert sorted(y[picked].tolist()) == [0, 1, 2]


def test_report_gets_gradcam_gallery_and_explanations_section(small_run, tmp_path, capsys):
    from train.report import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    evaluate_run(run, timing=False)
    report = (run / "report.html").read_text()
    assert report.count("<h3>Grad-CAM of the misclassified") == 2  # validation and test

    assert explain_main(["--run", str(run), "--samples", "6", "--misclassified", "--smoothgrad", "4"]) == 0
    report = (run / "report.html").read_text()
    assert "<!-- analysis:explanations -->" in report and "<h2>Explanations</h2>" in report
    data = json.loads((run / "analysis" / "explanations.json").read_text())["data"]
    assert data["layer"] == "conv2" and data["smoothgrad"] == 4
    correct, wrong = data["galleries"]
    assert len(correct["samples"]) == 6 and all(s["label"] == s["predicted"] for s in correct["samples"])
    assert len({s["label"] for s in correct["samples"]}) == 6  # one per class before any repeats
    assert all(s["label"] != s["predicted"] for s in wrong["samples"])
    scores = [s["score"] for s in wrong["samples"]]
    assert scores == sorted(scores, reverse=True)
    # The section survives a re-evaluation.
    evaluate_run(run, timing=False)
    assert "<!-- analysis:explanations -->" in (run / "report.html").read_text()

    capsys.readouterr()
    assert explain_main(["--run", str(run), "--layer", "conv9"]) == 2
    assert "conv1, conv2" in capsys.readouterr().err
    assert explain_main(["--run", str(tmp_path / "missing")]) == 6
    assert "run directory not found" in capsys.readouterr().err


def test_report_is_rendered_again_from_the_stored_analyses(tmp_path):
    """Each analysis is JSON (and PNG files) in the run; the page is rendered from all of them every time."""
    from train.report import Table, add_analysis, png, pyplot, render_run_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "lenet5", "data": "some/mnist"}))
    (run / "run.json").write_text(json.dumps({"params": 61706}))
    render_run_report(run)
    assert "<h1>lenet5 on mnist: run</h1>" in (run / "report.html").read_text()

    def crossval(mean: float):
        return add_analysis(run, "crossval", "2-fold cross-validation", {"model": "<b>lenet5</b>", "data": "d", "n": 10},
                            tables={"summary": Table([{"metric": "accuracy", "mean": mean, "std": 0.01}],
                                                     ["metric", "mean", "std"], {"mean": ".4f"}),
                                    "per_fold": Table([{"fold": 1}], ["fold"])})

    crossval(0.91234)
    fig = pyplot().figure(figsize=(1, 1))
    add_analysis(run, "zzz", "Other", {"a": 1}, tables={"t": Table([{"k": "<v>"}], ["k"])},
                 images={"picture": png(fig), "nothing": None})
    assert sorted(p.name for p in (run / "analysis" / "zzz").iterdir()) == ["00-picture.png"]
    crossval(0.5)  # replaces the first one
    html = (run / "report.html").read_text()
    assert html.count("<!-- analysis:crossval -->") == 1 and "<td>0.5000</td>" in html and "0.9123" not in html
    assert "&lt;b&gt;lenet5&lt;/b&gt; on d, n=10" in html  # data is escaped
    assert html.index("<!-- analysis:crossval -->") < html.index("<!-- analysis:zzz -->")
    assert "<td>&lt;v&gt;</td>" in html and html.count('alt="picture" src="data:image/png;base64,') == 1  # default template
    stored = json.loads((run / "analysis" / "crossval.json").read_text())
    assert stored["data"]["n"] == 10 and stored["tables"]["summary"]["rows"][0]["mean"] == 0.5
    render_run_report(run)
    assert (run / "report.html").read_text() == html


def test_commands_map_our_errors_to_exit_codes_and_let_library_errors_through(capsys):
    from train.data import DataError
    from train.errors import UsageError
    from train.report import run_report_command
    from train.runs import RunError

    def raising(e):
        def body():
            raise e
        return body

    assert run_report_command(raising(UsageError("--samples must be >= 1"))) == 2
    assert run_report_command(raising(DataError("x.csv: line 3: bad pixel"))) == 5
    assert run_report_command(raising(RunError("runs/x: run directory not found"))) == 6
    assert "error: runs/x: run directory not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="inside numpy"):  # a bug, not bad input: traceback, exit 1
        run_report_command(raising(ValueError("inside numpy")))
