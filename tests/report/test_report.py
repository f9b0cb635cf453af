import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from transkd.cli import main
from transkd.config import load_config
from transkd.engine import run as run_module
from transkd.errors import ConfigError
from transkd.report import write_report

TINY = [
    "data.options={length: 4, size: [32, 64]}",
    "data.val_options={length: 2}",
    "protocol.image_size=[32, 64]",
    "train.batch_size=2",
    "train.epochs=1",
    "train.num_workers=0",
    "train.tensorboard=false",
    "train.log_interval=1",
    "eval.batch_size=2",
]


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    """Teacher (B1), plain student (B0) and a KD student, each trained for two steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("engine") / "runs"
        teacher = run_module.run(load_config(None, [*TINY, "model.name=segformer_b1",
                                                    f"output.dir={root / 'teacher'}"]))
        run_module.run(load_config(None, [*TINY, f"output.dir={root / 'student'}"]))
        run_module.run(load_config(None, [*TINY, "distill.method=kd",
                                          f"teacher.weights={teacher.best_weights}",
                                          f"output.dir={root / 'kd'}"]))
    finally:
        torch.set_num_threads(threads)
    return root


def best_miou(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["best"]["miou"]


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The comparison table's rows by run name (cells stripped)."""
    section = re.split(r"\n## (?:Comparison|Summary)\n", markdown, maxsplit=1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in row.strip("|").split("|")] for row in rows[1:])}


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [value for name, value in attrs if name in ("src", "href", "data", "srcset")]


def assert_self_contained(page: str) -> int:
    parser = _Refs()
    parser.feed(page)
    assert parser.refs and all(ref.startswith("data:image/png;base64,") for ref in parser.refs)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert "url(" not in page
    return len(parser.refs)


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
        image.verify()


@pytest.mark.slow  # trains three tiny runs first
def test_report_of_engine_runs(engine_runs, tmp_path):
    runs = [engine_runs / name for name in ("kd", "student", "teacher")]
    result = write_report(runs, output=tmp_path / "out", samples=2)
    markdown = result.markdown.read_text()
    rows = table_rows(markdown)
    assert list(rows) == ["teacher", "student", "kd"]  # teacher, plain student, methods
    assert [rows[n]["role"] for n in rows] == ["teacher", "student", "kd"]
    assert rows["teacher"]["network"] == "segformer_b1" and rows["kd"]["network"] == "segformer_b0"
    for name in rows:
        assert rows[name]["best val mIoU (%)"] == f"{100 * best_miou(engine_runs / name):.2f}"
    # params/MACs of the deployed networks at the fixed 32x64 input, convention named
    assert rows["teacher"]["params (M)"] == "13.68" and rows["student"]["params (M)"] == "3.72"
    assert rows["kd"]["params (M)"] == rows["student"]["params (M)"]
    assert float(rows["teacher"]["GMACs"]) > float(rows["student"]["GMACs"]) > 0
    assert "one image at 32x64 (the protocol's fixed input size)" in markdown
    assert "TransKD paper's convention" in markdown
    assert ("synthetic val, protocol paper, input 32x64 (HxW), metric at 0.25 of the input "
            "resolution") in markdown
    teacher, student, kd = (best_miou(engine_runs / n) for n in ("teacher", "student", "kd"))
    if teacher > student:
        assert rows["kd"]["gap closed (%)"] == f"{100 * (kd - student) / (teacher - student):.1f}"
    else:
        assert "does not beat the student" in markdown
    # figures: loss terms per run, mIoU, per-class IoU, predictions; all valid PNGs
    names = sorted(p.name for p in result.figures.glob("*.png"))
    assert names == ["class_iou.png", "loss_kd.png", "loss_student.png", "loss_teacher.png",
                     "miou.png", "predictions.png"]
    for path in result.figures.glob("*.png"):
        assert_png(path)
        assert f"](figures/{path.name})" in markdown
    assert not list(result.figures.glob(".*"))  # no staging leftovers
    assert "| road |" in markdown and "| car |" in markdown  # class names of the run's dataset
    assert "the legend under the grid names each colour" in markdown
    assert markdown.count("<details><summary>resolved config of") == 3
    assert "  name: segformer_b1" in markdown
    page = result.html.read_text()
    assert assert_self_contained(page) == len(names)
    assert page.count("<details>") == 4 and "resolved config of kd" in page
    assert result.notes == []


@pytest.mark.slow  # trains three tiny runs first
def test_cli_report_of_a_folder_of_runs_writes_into_its_root(engine_runs, capsys):
    code = main(["report", str(engine_runs), "--samples", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (engine_runs / "REPORT.md").is_file() and (engine_runs / "report.html").is_file()
    assert "report of 3 run(s)" in out
    assert_png(engine_runs / "figures" / "predictions.png")


def write_fake_run(root, name, overrides, best, teacher_val=None, with_train=True):
    """A run folder written by hand in the engine's format (no weights)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = load_config(None, [*TINY, *overrides, f"output.dir={run_dir}"])
    (run_dir / "config.yaml").write_text(config.to_yaml())
    records = []
    if teacher_val is not None:
        records.append({"kind": "teacher_val", "step": 0, "time": 100.0, "miou": teacher_val,
                        "iou": [teacher_val] * 10, "acc": 0.9})
    if with_train:
        for step in (1, 2, 3, 4):
            records.append({"kind": "train", "step": step, "time": 100.0 + step, "epoch": step / 4,
                            "lr": 1e-3 / step, "ce": 2.0 / step, "kd": 0.5 / step, "loss": 2.5 / step,
                            "step_time": 0.1, "data_time": 0.0, "images_per_s": 20.0})
    iou = [best] * 9 + [None]
    for step, miou in ((2, best / 2), (4, best)):
        records.append({"kind": "val", "step": step, "time": 110.0 + step, "miou": miou, "iou": iou,
                        "acc": 0.9, "epoch": step // 4})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"status": "completed", "steps": 4, "total_steps": 4, "train_seconds": 12.5,
               "best": {"miou": best, "acc": 0.9, "iou": iou, "step": 4, "epoch": 1}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def fake_runs(tmp_path):
    root = tmp_path / "runs"
    distill = ["teacher.name=segformer_b1", f"teacher.weights={root / 'gone.safetensors'}"]
    return {
        "teacher": write_fake_run(root, "teacher", ["model.name=segformer_b1"], 0.80),
        "student": write_fake_run(root, "student", [], 0.50),
        "transkd_ea": write_fake_run(root, "transkd_ea", ["distill.method=transkd_ea", *distill], 0.65,
                                     teacher_val=0.78),
        "kd": write_fake_run(root, "kd", ["distill.method=kd", *distill], 0.575, teacher_val=0.78),
    }


def test_gap_share_of_each_method(fake_runs, tmp_path):
    result = write_report(list(fake_runs.values()), output=tmp_path / "out")
    markdown = result.markdown.read_text()
    rows = table_rows(markdown)
    assert list(rows) == ["teacher", "student", "transkd_ea", "kd"]
    assert rows["transkd_ea"]["gap closed (%)"] == "50.0"  # (65 - 50) / (80 - 50)
    assert rows["kd"]["gap closed (%)"] == "25.0"  # (57.5 - 50) / (80 - 50)
    assert rows["teacher"]["gap closed (%)"] == rows["student"]["gap closed (%)"] == "—"
    assert "transkd_ea: (65.00 − 50.00) / (80.00 − 50.00) = 50.0% (teacher: run teacher" in markdown
    assert rows["transkd_ea"]["best val mIoU (%)"] == "65.00" and rows["kd"]["at step (epoch)"] == "4 (1)"
    assert rows["student"]["wall time (s)"] == "12"  # summary.json's train_seconds, rounded
    # a missing class IoU (NaN in the run) is n/a, never 0
    assert "| car | n/a | n/a | n/a | n/a |" in markdown
    # loss curves from the hand-written train records; predictions skipped: no weights saved
    assert_png(result.figures / "loss_kd.png")
    assert "no deployable network in best/ or last/" in markdown
    assert len(result.notes) == 4
    assert_self_contained(result.html.read_text())


def test_gap_from_the_teacher_scored_in_the_distillation_run(fake_runs, tmp_path):
    """Without a teacher run, the teacher's score logged at the start of distillation is used."""
    result = write_report([fake_runs["student"], fake_runs["transkd_ea"]], output=tmp_path / "out",
                          samples=0)
    markdown = result.markdown.read_text()
    assert table_rows(markdown)["transkd_ea"]["gap closed (%)"] == f"{100 * 15 / 28:.1f}"
    assert "its teacher as scored when transkd_ea started" in markdown
    assert "Skipped (--samples 0)." in markdown


def test_roles_by_size_without_a_distillation_run(fake_runs, tmp_path):
    result = write_report([fake_runs["student"], fake_runs["teacher"]], output=tmp_path / "out",
                          samples=0)
    rows = table_rows(result.markdown.read_text())
    assert [(n, r["role"]) for n, r in rows.items()] == [("teacher", "teacher"), ("student", "student")]
    assert "gap closed (%)" not in rows["student"]


def test_dataset_that_is_gone_skips_predictions_with_a_note(tmp_path):
    run_dir = write_fake_run(tmp_path, "camvid_b0", ["data.name=camvid", f"data.root={tmp_path / 'gone'}",
                                                     "data.options={}", "data.val_options={}",
                                                     "protocol.image_size=null"], 0.4)
    result = write_report([run_dir])
    assert result.markdown.resolve() == tmp_path / "report" / "REPORT.md"  # beside the run
    markdown = result.markdown.read_text()
    assert "camvid_b0: validation data not available" in markdown and str(tmp_path / "gone") in markdown
    assert "| sky |" in markdown  # CamVid's class names, without the data
    # the paper protocol's short-side resize needs an image to know the input size
    assert table_rows(markdown)["camvid_b0"]["GMACs"] == "n/a"
    assert "the dataset is not available" in markdown
    assert not (result.figures / "predictions.png").exists()


def test_bad_inputs_are_one_sentence_and_write_nothing(fake_runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"is not a run folder: it has no config.yaml and metrics.jsonl"):
        write_report([empty])
    as_file = tmp_path / "report.txt"
    as_file.write_text("x")
    code = main(["report", str(fake_runs["student"]), "--output", str(as_file)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err == f"error: output folder {as_file} is a file; choose a folder with --output"
    code = main(["report", str(fake_runs["student"]), str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and re.fullmatch(r"error: run folder \S+missing does not exist", err)
    (fake_runs["kd"] / "metrics.jsonl").write_text("{not json\n")
    code = main(["report", str(fake_runs["kd"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "metrics.jsonl is not a metrics file of JSON lines" in err
    assert not any((run / "report").exists() for run in fake_runs.values())
    assert not (tmp_path / "runs" / "report").exists()
    assert as_file.read_text() == "x"


def test_default_folder_is_report_beside_the_runs_and_is_announced(fake_runs, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["report", "runs/teacher", "runs/student", "--samples", "0"])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "runs" / "report" / "REPORT.md").is_file()
    assert f"writing the report to {Path('runs/report')}" in out
    assert "runs/report/REPORT.md and runs/report/report.html" in out


def tradeoff_result(variants=("eager", "ort-fp32", "ort-int8-static")) -> dict:
    """A trade-off result in the form ``transkd bench --tradeoff`` writes, numbers made up."""
    rows = []
    for index, variant in enumerate(variants):
        ms = 40.0 - 10 * index
        rows.append({"variant": variant, "status": "ok", "miou": 0.5 - 0.002 * index,
                     "size_mb": 15.0 - 4 * index,
                     "latency": {"median_ms": ms, "q25_ms": ms - 1, "q75_ms": ms + 1},
                     "cpu_time": {"median_ms": ms / 2}, "speed_vs_baseline_wall": 30.0 / ms,
                     "speed_vs_baseline_cpu": 15.0 / (ms / 2), "fraction_of_peak_wall": 0.4,
                     "fraction_of_peak_cpu": 0.6,
                     "lowering": ({"precision": "int8-static", "ops": ["Conv"]} if "int8" in variant
                                  else None)})
    rows.append({"variant": "compile", "status": "failed", "reason": "no C++ compiler"})
    return {"model": "student_b0", "num_classes": 11, "input_size": [1, 3, 192, 256],
            "input_size_reason": "the training size", "threads": 1, "repeats": 5, "warmup": 1,
            "baseline": "ort-fp32", "rows": rows, "flops_per_forward": 1.07e9, "flops_convention": "torch",
            "peak": {"what": "fp32 1024x1024 torch.mm", "gflops_per_s_wall": 50.0, "gflops_per_s_cpu": 80.0},
            "machine": {"cpu": {"model": "Test CPU", "cpus": 2, "isa": ["AVX2"]},
                        "load_average_before": [0.5, 0.5, 0.5], "load_average_after": [0.6, 0.5, 0.5]},
            "accuracy": {"dataset": "camvid", "split": "val", "images": 101}}


def test_deployment_tradeoff_kept_in_a_run_is_reported(fake_runs, tmp_path):
    deploy = fake_runs["student"] / "deploy"
    deploy.mkdir()
    (deploy / "tradeoff.json").write_text(json.dumps(tradeoff_result()))
    result = write_report([fake_runs["student"], fake_runs["kd"]], output=tmp_path / "out", samples=0)
    markdown = result.markdown.read_text()
    assert "## Deployment: accuracy against latency" in markdown
    assert "### student: its deployable forms" in markdown
    assert "### kd: its deployable forms" not in markdown  # a run without a trade-off has none
    assert ("| ort-int8-static | 49.60 | 20.0 | 19.0–21.0 | 10.0 | 1.50× / 1.50× | 40.0% / 60.0% | 7.0 |"
            in markdown)
    assert "| compile | unavailable: no C++ compiler |" in markdown
    assert "Test CPU (2 CPUs; AVX2)" in markdown and "mIoU on camvid val (101 images" in markdown
    assert "ort-int8-static: ops Conv" in markdown
    assert_png(result.figures / "tradeoff_student.png")
    assert_self_contained(result.html.read_text())


def test_no_tradeoff_no_deployment_section_and_a_broken_one_is_named(fake_runs, tmp_path):
    result = write_report([fake_runs["student"]], output=tmp_path / "out", samples=0)
    assert "Deployment" not in result.markdown.read_text()
    deploy = fake_runs["kd"] / "deploy"
    deploy.mkdir()
    (deploy / "tradeoff.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ConfigError, match=r"tradeoff.json is not a trade-off result written by transkd"):
        write_report([fake_runs["kd"]], output=tmp_path / "out2", samples=0)
    assert not (tmp_path / "out2").exists()


def test_tradeoff_of_a_run_folder_is_kept_in_it_for_the_report(tmp_path, monkeypatch, capsys):
    """Without --output, `bench RUN --tradeoff` writes RUN/deploy/, where `transkd report` reads it."""
    from transkd.cli import bench as bench_cli
    from transkd.report.tradeoff import read_tradeoff

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    seen = {}

    def fake_tradeoff(model, data, output=None, **_):
        seen["output"] = output
        return tradeoff_result()

    monkeypatch.setattr(bench_cli, "deployment_tradeoff", fake_tradeoff)
    assert main(["bench", str(run_dir), "--tradeoff"]) == 0
    assert seen["output"] == str(run_dir / "deploy")
    assert read_tradeoff(run_dir)["model"] == "student_b0"
    assert "wrote" in capsys.readouterr().out
    assert main(["bench", str(run_dir), "--tradeoff", "--output", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "tradeoff.json").is_file()
