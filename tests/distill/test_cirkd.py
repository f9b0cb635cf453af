"""CIRKD: its terms against the paper's formulas written out here, its memory bank (written as
the paper says, saved in the method's state, resumed exactly) and its options."""

import math

import pytest
import torch
from baseline_helpers import assert_scalar_terms, backward_and_collect, build_method, fake_context

from transkd.distill import cirkd  # noqa: F401  (registers "cirkd")
from transkd.distill.cirkd import batch_relation_loss, gather_across_ranks
from transkd.errors import ConfigError


def kl_rows(teacher_logits, student_logits):
    """Σ over rows of KL(softmax(teacher row) ‖ softmax(student row)), element by element."""
    total = 0.0
    for t_row, s_row in zip(teacher_logits.tolist(), student_logits.tolist()):
        zt = sum(math.exp(v) for v in t_row)
        zs = sum(math.exp(v) for v in s_row)
        for t, s in zip(t_row, s_row):
            p = math.exp(t) / zt
            total += p * (math.log(p) - (s - math.log(zs)))
    return total


def unit_columns(feature):
    """(C, H, W) → (C, N) with each pixel's vector scaled to length 1."""
    flat = feature.reshape(feature.shape[0], -1)
    return flat / torch.sqrt((flat ** 2).sum(dim=0, keepdim=True))


def test_batch_term_is_the_papers_mean_of_row_kls_over_image_pairs():
    grid = torch.arange(2 * 3 * 2 * 3, dtype=torch.float64).reshape(2, 3, 2, 3)
    student, teacher = torch.sin(grid) + 0.1, torch.cos(0.5 * grid) * 2.0
    tau = 0.5
    want = 0.0
    for i in range(2):
        for j in range(2):
            s = unit_columns(student[i]).t() @ unit_columns(student[j])      # (N, N)
            t = unit_columns(teacher[i]).t() @ unit_columns(teacher[j])
            want += kl_rows(t / tau, s / tau) / 6                            # mean over N = 6 rows
    want /= 4                                                                # mean over B² pairs
    assert batch_relation_loss(student, teacher, tau).item() == pytest.approx(want, rel=1e-10)


def small_bank(**options):
    """Banks small enough that every slot is sampled each step (contrast size ≥ bank size)."""
    return build_method("cirkd", pixel_memory_size=6, region_memory_size=3, pixel_contrast_size=64,
                        region_contrast_size=64, pixels_per_update=2, **options)


def test_memory_terms_match_the_papers_formula_on_the_bank_they_read():
    method = small_bank(kd_weight=0.0, batch_weight=0.0, pixel_weight=1.0, region_weight=1.0,
                        contrast_temperature=0.5, relation_temperature=2.0)
    ctx = fake_context(batch=2, size=64)
    terms = method.loss_terms(ctx)
    assert_scalar_terms(terms, {"cirkd_batch", "cirkd_pixel", "cirkd_region"})

    student_map, teacher_map = ctx.student.features[3], ctx.teacher.features[3]      # 2×2 maps
    with torch.no_grad():
        projected = method.projector(student_map)
    labels = ctx.targets[:, ::32, ::32]                 # nearest: 64 → 2 takes rows/cols 0 and 32
    anchors_s, anchors_t = [], []
    for n in range(2):
        s, t = unit_columns(projected[n]), unit_columns(teacher_map[n])
        for p, label in enumerate(labels[n].flatten().tolist()):
            if label != 255:
                anchors_s.append(s[:, p])
                anchors_t.append(t[:, p])
    assert 0 < len(anchors_s) < 8          # the ignored block leaves some pixels out
    anchors_s, anchors_t = torch.stack(anchors_s), torch.stack(anchors_t)
    for term, queue in (("cirkd_pixel", method.pixel_queue), ("cirkd_region", method.region_queue)):
        bank = queue.reshape(-1, queue.shape[-1])         # every slot of every class
        s_logits, t_logits = anchors_s @ bank.t() / 0.5, anchors_t @ bank.t() / 0.5
        want = kl_rows(t_logits / 2.0, s_logits / 2.0) / len(anchors_s) * 2.0 ** 2
        assert terms[term].item() == pytest.approx(want, rel=1e-5), term


def test_bank_holds_class_means_and_random_pixels_written_at_the_pointers():
    method = build_method("cirkd", pixel_memory_size=5, region_memory_size=2, pixels_per_update=3)
    dim = method.pixel_queue.shape[-1]
    embeddings = torch.randn(1, dim, 2, 3)
    labels = torch.tensor([[[0, 0, 0], [0, 2, 255]]])
    method.enqueue(embeddings, labels)
    flat = embeddings[0].reshape(dim, -1)
    mean0 = flat[:, :4].mean(dim=1)
    assert torch.allclose(method.region_queue[0, 0], mean0 / mean0.norm(), atol=1e-6)
    assert torch.allclose(method.region_queue[2, 0], flat[:, 4] / flat[:, 4].norm(), atol=1e-6)
    assert method.region_pointer.tolist() == [1, 0, 1, 0]
    members = (flat[:, :4] / flat[:, :4].norm(dim=0)).t()
    written = method.pixel_queue[0, :3]
    assert all(torch.isclose(members, row, atol=1e-6).all(dim=1).any() for row in written)
    assert method.pixel_pointer.tolist() == [3, 0, 1, 0]
    method.enqueue(embeddings, labels)          # 3 + 3 ≥ 5: the last 3 slots, pointer back to 0
    assert method.pixel_pointer[0].item() == 0
    assert method.region_pointer[0].item() == 0


def test_bank_is_state_and_a_resumed_method_continues_exactly():
    method = small_bank()
    assert {"pixel_queue", "pixel_pointer", "region_queue", "region_pointer"} <= set(method.state_dict())
    method.loss_terms(fake_context(seed=1))
    state = {k: v.clone() for k, v in method.state_dict().items()}
    torch.manual_seed(7)
    want = method.loss_terms(fake_context(seed=2))

    torch.manual_seed(99)                       # another initial bank and projector
    resumed = small_bank()
    resumed.load_state_dict(state)
    torch.manual_seed(7)
    got = resumed.loss_terms(fake_context(seed=2))
    for name, value in want.items():
        assert got[name].item() == value.item(), name
    for name, value in method.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_unlabelled_pixels_neither_write_the_bank_nor_anchor():
    method = small_bank()
    before = {k: v.clone() for k, v in method.state_dict().items() if "queue" in k or "pointer" in k}
    ctx = fake_context()
    ctx.targets.fill_(255)
    terms = backward_and_collect(method, ctx)
    assert terms["cirkd_pixel"].item() == 0 and terms["cirkd_region"].item() == 0
    assert terms["cirkd_batch"].item() > 0 and terms["cirkd_kd"].item() > 0
    for key, value in before.items():
        assert torch.equal(method.state_dict()[key], value), key


def test_gather_is_the_tensor_itself_outside_distributed_training():
    tensor = torch.randn(2, 3)
    assert gather_across_ranks(tensor) is tensor


def test_defaults_are_the_authors():
    opts = build_method("cirkd").options
    assert (opts.stage, opts.kd_weight, opts.batch_weight, opts.pixel_weight, opts.region_weight) == \
        (4, 1.0, 1.0, 0.1, 0.1)
    assert (opts.contrast_temperature, opts.relation_temperature) == (0.1, 1.0)
    assert (opts.pixel_memory_size, opts.region_memory_size) == (20000, 2000)
    assert (opts.pixel_contrast_size, opts.region_contrast_size, opts.pixels_per_update) == (4096, 1024, 16)


@pytest.mark.parametrize("options, message", [
    ({"stage": 5}, "beyond"),
    ({"pixel_memory_size": 0}, "pixel_memory_size"),
    ({"pixels_per_update": 30, "pixel_memory_size": 20}, "pixels_per_update"),
    ({"contrast_temperature": 0}, "contrast_temperature"),
    ({"region_weight": -1}, "region_weight"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("cirkd", **options)


def test_combines_with_other_methods_on_a_real_pair():
    from make_fixtures import build_case

    distiller, images, targets = build_case(
        "cirkd+af_dcd+kd", cirkd={"pixel_memory_size": 64, "kd_weight": 0.0},
        af_dcd={"kd_weight": 0.0})
    out = distiller(images, targets)
    assert {"kd", "cirkd_batch", "cirkd_pixel", "cirkd_region", "af_dcd_feat", "af_dcd_contrast"} <= set(out)
    assert "cirkd_kd" not in out and "af_dcd_kd" not in out
    out["loss"].backward()
    assert distiller.methods["cirkd"].pixel_queue.shape[1] == 64


@pytest.mark.slow  # two short distillation runs, one interrupted and resumed
def test_an_interrupted_run_resumes_with_the_same_bank(tmp_path, monkeypatch):
    from transkd.config import load_config
    from transkd.engine import run as run_module
    from transkd.engine.checkpoint import load_checkpoint
    from transkd.engine.trainer import Trainer
    from transkd.models import create_model
    from transkd.weights.io import save_model

    torch.manual_seed(1)
    teacher = save_model(create_model("segformer_b0", num_classes=10), tmp_path / "teacher.safetensors")

    def config(name):
        return load_config(None, [
            "data.options={length: 8, size: [32, 64]}", "data.val_options={length: 2}",
            "protocol.image_size=[32, 64]", "train.batch_size=2", "train.num_workers=0",
            "train.tensorboard=false", "train.log_interval=1", "train.epochs=2",
            "train.checkpoint_interval=100", "train.val_interval=1000", "distill.eval_teacher=false",
            f"teacher.weights={teacher}", "distill.method=cirkd",
            "distill.options={pixel_memory_size: 40, region_memory_size: 8, pixels_per_update: 4}",
            f"output.dir={tmp_path / name}"])

    assert run_module.run(config("straight")).status == "completed"
    original, calls = Trainer._train_step, {"n": 0}

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", interrupting)
    assert run_module.run(config("resumed")).status == "interrupted"
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert run_module.run(config("resumed"), resume="auto").status == "completed"

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    bank = [k for k in a if k.startswith("methods.cirkd.") and ("queue" in k or "pointer" in k)]
    assert len(bank) == 4
    assert all(torch.equal(a[k], b[k]) for k in a)


GATHER_SCRIPT = '''
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from transkd.distill import NetworkInfo, get_method
from transkd.distill.cirkd import gather_across_ranks


def build():
    cls = get_method("cirkd")
    torch.manual_seed(0)
    options = cls.parse_options({"pixel_memory_size": 10, "region_memory_size": 4, "pixels_per_update": 3})
    return cls(NetworkInfo((8, 16, 24, 32), 4), NetworkInfo((16, 32, 48, 64), 4), options)


def data(rank):
    generator = torch.Generator().manual_seed(10 + rank)
    return torch.randn(2, 64, 2, 2, generator=generator), torch.randint(0, 4, (2, 2, 2), generator=generator)


def worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    method = build()
    embeddings, labels = data(rank)
    torch.manual_seed(5)
    method.enqueue(gather_across_ranks(embeddings), gather_across_ranks(labels))
    torch.save(method.state_dict(), f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    folder = sys.argv[1]
    mp.spawn(worker, args=(folder,), nprocs=2)
    reference = build()   # one process that sees both ranks' images, in rank order
    (e0, l0), (e1, l1) = data(0), data(1)
    torch.manual_seed(5)
    reference.enqueue(torch.cat([e0, e1]), torch.cat([l0, l1]))
    for rank in range(2):
        state = torch.load(f"{folder}/rank{rank}.pt")
        for key, value in reference.state_dict().items():
            assert torch.equal(state[key], value), (rank, key)
    print("banks agree")
'''


@pytest.mark.slow  # two processes
def test_under_ddp_every_rank_writes_every_ranks_pixels_to_its_bank(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "banks agree" in done.stdout
