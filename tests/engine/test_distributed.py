"""Two CPU processes (gloo) launched by torchrun must take the same optimiser step as one
process with the same global batch.

BatchNorm makes a per-process batch statistic differ from the global one unless BatchNorm is
synchronised, and PyTorch's SyncBatchNorm runs on CUDA only; so the comparison runs with
``train.freeze_bn`` (every BatchNorm on its running statistics), no dropout/drop-path, and data
without ignored pixels, where per-process mean losses average exactly to the global mean.

AdamW's first step is ``lr · g / (|g| + eps)``: with the default eps 1e-8 it turns gradients at
round-off level (the key biases' exact gradient is 0, for one) into steps of ±lr, so a
summation-order difference of 1e-9 would move a weight by lr. The comparison uses eps 1e-6,
where such noise moves weights by less than lr · 1e-3.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from transkd.config import load_config
from transkd.engine.distributed import EpochSampler, ShardSampler
from transkd.engine.run import run
from transkd.models import create_model
from transkd.weights.io import model_file, read_safetensors, save_model

SETTINGS = [
    "data.options={length: 8, size: [32, 64], seed: 5}",  # no void pixels in these samples
    "protocol.image_size=[32, 64]",
    "protocol.max_shift=0",
    "model.options={drop_path_rate: 0.0, dropout: 0.0}",
    "train.freeze_bn=true",
    "train.epochs=null",
    "train.iterations=1",
    "schedule.kind=constant",
    "optim.lr=1e-4",
    "optim.eps=1e-6",
    "train.num_workers=0",
    "train.tensorboard=false",
    "eval.batch_size=3",
    "distill.method=transkd_base",
]


def test_samplers_shard_without_overlap():
    ranks = [EpochSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(1)
    seen = [i for s in ranks for _, i in s]
    assert sorted(seen) == list(range(10))
    single = EpochSampler(10, seed=3)
    single.set_epoch(1)
    order = [i for _, i in single]
    assert [i for _, i in ranks[0]] == order[0::2]
    shards = [list(ShardSampler(7, r, 2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(7))
    single.set_epoch(1, skip=4)
    assert [i for _, i in single] == order[4:]


@pytest.mark.slow
def test_two_process_step_equals_one_process_with_the_same_global_batch(tmp_path):
    torch.manual_seed(1)
    teacher = save_model(create_model("segformer_b0", num_classes=10, drop_path_rate=0.0, dropout=0.0),
                         tmp_path / "teacher.safetensors")
    common = [*SETTINGS, f"teacher.weights={teacher}"]
    single = load_config(None, [*common, "train.batch_size=4", f"output.dir={tmp_path / 'single'}"])
    run(single)

    ddp = load_config(None, [*common, "train.batch_size=2", f"output.dir={tmp_path / 'ddp'}"])
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(ddp.to_dict()))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "transkd", "distill", "--config", str(config_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # only rank 0 prints

    a, _ = read_safetensors(model_file(tmp_path / "single", last=True))
    b, _ = read_safetensors(model_file(tmp_path / "ddp", last=True))
    torch.manual_seed(0)  # the run seeds with train.seed 0 and builds the student first
    initial_state = create_model("segformer_b0", num_classes=10, drop_path_rate=0.0,
                                 dropout=0.0).state_dict()
    assert a.keys() == b.keys() == initial_state.keys()
    moved = sum(not torch.equal(a[k], initial_state[k]) for k in a)
    assert moved > len(a) // 2  # the step changed the weights
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    adapters_a, _ = read_safetensors(tmp_path / "single" / "last" / "adapters.safetensors")
    adapters_b, _ = read_safetensors(tmp_path / "ddp" / "last" / "adapters.safetensors")
    for key in adapters_a:
        assert torch.allclose(adapters_a[key], adapters_b[key], atol=1e-6, rtol=0), key

    # the confusion matrix is summed over both processes: same validation numbers
    summary_a = json.loads((tmp_path / "single" / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary_a["last_val"]["confusion"] == summary_b["last_val"]["confusion"]
    assert summary_a["teacher_val"]["confusion"] == summary_b["teacher_val"]["confusion"]


def test_sync_bn_on_cpu_is_refused_with_the_alternative(tmp_path):
    from transkd.engine.distributed import DistEnv
    from transkd.engine.run import plan_run
    from transkd.errors import ConfigError

    config = load_config(None, ["train.sync_bn=true", "train.device=cpu",
                                f"output.dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="'train.sync_bn' needs CUDA"):
        plan_run(config, env=DistEnv(rank=0, world_size=2))
