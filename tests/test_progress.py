"""Progress: a bar on a terminal, a plain line every ``interval`` units in a log."""

import io
import re

from transkd.cli import main
from transkd.progress import Progress, duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_a_terminal_with_a_width_gets_a_bar():
    assert Progress(1, bar_stream=Terminal()).tty is False  # no size to draw in
    assert Progress(1, bar_stream=io.StringIO()).tty is False


def test_a_log_gets_a_plain_line_every_interval_and_at_the_end():
    stream = io.StringIO()
    progress = Progress(5, description="segformer_b0", interval=2, line_stream=stream, tty=False)
    for step in range(5):
        progress.update(1, loss=0.5 - step / 10, lr=1e-3, **{"images/s": 12.5})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["segformer_b0: step 2/5 (40%)",
                                                      "segformer_b0: step 4/5 (80%)",
                                                      "segformer_b0: step 5/5 (100%)"]
    assert re.fullmatch(r"segformer_b0: step 2/5 \(40%\), loss 0\.4000, lr 1\.00e-03, 12\.5 images/s, "
                        r"elapsed \d+s, ETA \d+s", lines[0]), lines[0]
    assert "ETA" not in lines[-1]  # nothing left


def test_a_terminal_gets_a_bar_and_no_lines_and_disabled_shows_nothing():
    terminal = Terminal()
    with Progress(3, description="eval", unit="batch", bar_stream=terminal, line_stream=terminal,
                  interval=1, tty=True) as progress:
        progress.update(3)
    assert "eval:" in terminal.getvalue() and "/3 [" in terminal.getvalue()  # a tqdm bar
    assert "batch 3/3 (100%)" not in terminal.getvalue()
    quiet = io.StringIO()
    with Progress(3, bar_stream=quiet, line_stream=quiet, enabled=False, interval=1) as progress:
        progress.update(3)
    assert quiet.getvalue() == ""


def test_durations_read_short():
    assert [duration(s) for s in (4.4, 65, 7380, float("inf"))] == ["4s", "1m05s", "2h03m", "?"]


def test_training_in_a_log_prints_step_loss_lr_speed_and_eta_every_log_interval(tmp_path, capsys):
    args = ["train", "--set", "data.options={length: 8, size: [32, 64]}",
            "--set", "data.val_options={length: 2}", "--set", "protocol.image_size=[32, 64]",
            "--set", "train.batch_size=2", "--set", "train.iterations=4", "--set", "train.log_interval=2",
            "--set", "schedule.kind=standard", "--set", "schedule.warmup_iters=1",
            "--set", "train.val_interval=1000", "--set", "train.tensorboard=false",
            "--set", "train.num_workers=0", "--set", "eval.batch_size=2",
            "--output", str(tmp_path / "run")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("segformer_b0: step")]
    assert [line.split(",")[0] for line in lines] == ["segformer_b0: step 2/4 (50%)",
                                                      "segformer_b0: step 4/4 (100%)"]
    assert re.search(r", loss \d+\.\d{4}, lr [\d.e+-]+, [\d.]+ images/s, elapsed \d+s, ETA \d+s$", lines[0])
    assert err == ""  # standard error is for warnings and errors only


def test_a_short_job_leaves_no_lines_when_asked_to_stay_quiet_at_first():
    stream = io.StringIO()
    with Progress(4, description="evaluate", unit="batch", interval=1, line_stream=stream, tty=False,
                  quiet_for=60.0) as progress:
        progress.update(4)
    assert stream.getvalue() == ""


def test_evaluation_shows_progress_over_batches(monkeypatch):
    import torch

    from transkd.engine import evaluate as evaluate_module
    from transkd.models import create_model

    made = []

    class Recording(Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(evaluate_module, "Progress", Recording)
    batches = [{"image": torch.zeros(1, 3, 32, 32), "label": torch.zeros(1, 8, 8, dtype=torch.long)}] * 3
    evaluate_module.evaluate(create_model("segformer_b0", num_classes=2), batches, 2, progress=True)
    assert [(p.total, p.count, p.unit) for p in made] == [(3, 3, "batch")]
