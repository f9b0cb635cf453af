"""Under torchrun each process reads its own share of the unlabelled stream too: two CPU
processes take the same optimiser step as one process with the same global batch of labelled
and unlabelled images (same settings and reasons as test_distributed.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_distributed import SETTINGS

from transkd.config import load_config
from transkd.engine.run import run
from transkd.models import create_model
from transkd.weights.io import model_file, read_safetensors, save_model


@pytest.mark.slow  # two processes started by torchrun
def test_two_processes_share_the_unlabelled_stream_like_one(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    torch.manual_seed(1)
    teacher = save_model(create_model("segformer_b0", num_classes=10, drop_path_rate=0.0, dropout=0.0),
                         tmp_path / "teacher.safetensors")
    common = [*SETTINGS, f"teacher.weights={teacher}", f"data.unlabelled={folder}",
              "data.unlabelled_ratio=1", "distill.pseudo_label_threshold=0.05"]
    run(load_config(None, [*common, "train.batch_size=4", f"output.dir={tmp_path / 'single'}"]))

    ddp = load_config(None, [*common, "train.batch_size=2", f"output.dir={tmp_path / 'ddp'}"])
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(ddp.to_dict()))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "transkd", "distill", "--config", str(config_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 0: trained on 4 labelled and 4 unlabelled images" in done.stdout

    a, _ = read_safetensors(model_file(tmp_path / "single", last=True))
    b, _ = read_safetensors(model_file(tmp_path / "ddp", last=True))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
