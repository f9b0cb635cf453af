"""``transkd convert``: authors', NVlabs and Hugging Face checkpoints in, foreign namings out."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from transkd import create_model, load_student
from transkd.cli import main
from transkd.engine.build import initialise_from
from transkd.weights import export_state_dict, read_safetensors

PIXELS = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))


_BUILT: dict[tuple, torch.nn.Module] = {}


def trained_like(name: str, num_classes: int | None = 20) -> torch.nn.Module:
    """A random model in eval mode whose BatchNorm statistics are not the defaults (built once)."""
    if (name, num_classes) not in _BUILT:
        _BUILT[name, num_classes] = _randomised(name, num_classes)
    return _BUILT[name, num_classes]


def _randomised(name: str, num_classes: int | None) -> torch.nn.Module:
    torch.manual_seed(len(_BUILT))
    net = create_model(name) if num_classes is None else create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for buf_name, buf in net.named_buffers():
            if buf_name.endswith("running_mean"):
                buf.normal_()
            elif buf_name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return net.eval()


def authors_flat(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The TransKD authors' mit_b* naming: NVlabs keys without backbone./decode_head."""
    nvlabs = export_state_dict(net, "nvlabs")
    return {k.removeprefix("backbone.").removeprefix("decode_head."): v for k, v in nvlabs.items()}


def authors_distiller_checkpoint(net: torch.nn.Module, prefix: str = "student.") -> dict:
    """What train_TransKDBase.py saves: SKF(student) under DataParallel, with epoch/optimizer."""
    state = {f"module.{prefix}{k}": v for k, v in authors_flat(net).items()}
    state.update({"module.skfs.0.conv1.0.weight": torch.randn(64, 256, 1, 1),
                  "module.embed1_linearproject.weight": torch.randn(64, 32),
                  "module.patch_embed1.proj.weight": torch.randn(64, 3, 7, 7)})
    return {"epoch": 90, "arch": "SKF(...)", "state_dict": state, "best_acc": torch.tensor(0.6858),
            "optimizer": {"state": {}, "param_groups": [{"lr": 6e-5, "params": [0, 1]}]}}


def convert(capsys, *argv) -> tuple[int, str, str]:
    code = main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_same_outputs(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    with torch.no_grad():
        assert torch.equal(loaded.eval()(PIXELS), original(PIXELS))


CONTAINERS = {
    "distiller": lambda net: authors_distiller_checkpoint(net),
    "s_net prefix": lambda net: {"model": {"s_net." + k: v for k, v in authors_flat(net).items()}},
    "module": lambda net: {"state_dict": {"module." + k: v for k, v in
                                          export_state_dict(net, "nvlabs").items()}},
}


@pytest.mark.parametrize("container", CONTAINERS)
def test_authors_checkpoint_round_trips_exactly(tmp_path, capsys, container):
    original = trained_like("segformer_b0")
    src, out = tmp_path / "model_TransKDBase_best.pth", tmp_path / "student.safetensors"
    torch.save(CONTAINERS[container](original), src)
    code, stdout, stderr = convert(capsys, src, "--output", out, "--dataset", "cityscapes")
    assert code == 0, stderr
    assert_same_outputs(load_student(out), original)
    assert "inferred  segformer_b0 from the tensors: stage widths 32/64/160/256, blocks 2/2/2/2" in stdout
    assert "20 classes" in stdout and "3.72 M" in stdout and "nvlabs naming" in stdout
    assert "19 names from dataset cityscapes + void as output 19" in stdout
    _, meta = read_safetensors(out)
    assert meta["architecture"] == "segformer_b0" and meta["num_classes"] == 20
    assert meta["kind"] == "segmentor" and meta["source_format"] == "nvlabs"
    assert meta["void_as_extra_class"] is True and meta["class_names"][0] == "road"
    assert meta["converted_from"] == src.name
    authors = container != "module"  # flat mit_b* names are the authors' own model
    assert meta["mean"] == ([0.0] * 3 if authors else pytest.approx([0.485, 0.456, 0.406]))
    if container == "distiller":
        assert "prefix 'student.'; left out embed1_linearproject, patch_embed1, skfs" in stdout


def test_fpn_architecture_is_inferred_from_mmseg_names(tmp_path, capsys):
    original = trained_like("pvtv2_b0_fpn", num_classes=7)
    src, out = tmp_path / "pvt.pth", tmp_path / "pvt.safetensors"
    torch.save({"state_dict": export_state_dict(original, "mmseg")}, src)
    code, stdout, stderr = convert(capsys, src, "-o", out)
    assert code == 0, stderr
    assert "inferred  pvtv2_b0_fpn from the tensors" in stdout and "MLP ratio 8/8/4/4" in stdout
    assert_same_outputs(load_student(out), original)


def test_model_and_classes_can_be_named(tmp_path, capsys):
    original = trained_like("segformer_b0", num_classes=3)
    src, out = tmp_path / "b0.pth", tmp_path / "b0.safetensors"
    torch.save(authors_flat(original), src)
    names = tmp_path / "classes.txt"
    names.write_text("sky\n\nroad\ncar\n")
    code, stdout, stderr = convert(capsys, src, "-o", out, "--model", "segformer_b0",
                                   "--num-classes", "3", "--class-names", names, "--input-norm", "imagenet")
    assert code == 0, stderr
    assert "inferred" not in stdout
    _, meta = read_safetensors(out)
    assert meta["class_names"] == ["sky", "road", "car"] and meta["void_as_extra_class"] is False
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert_same_outputs(load_student(out), original)


def test_imagenet_encoder_becomes_an_encoder_file_for_model_init(tmp_path, capsys):
    encoder = trained_like("mit_b0", num_classes=None)
    imagenet = export_state_dict(encoder, "nvlabs")
    imagenet["head.weight"], imagenet["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    src, out = tmp_path / "mit_b0.pth", tmp_path / "mit_b0.safetensors"
    torch.save(imagenet, src)
    code, stdout, stderr = convert(capsys, src, "-o", out)
    assert code == 0, stderr
    assert "inferred  mit_b0" in stdout and "no decode head" in stdout and "ImageNet classifier" in stdout
    state, meta = read_safetensors(out)
    assert meta["kind"] == "encoder" and meta["architecture"] == "mit_b0" and "num_classes" not in meta
    assert "stages.0.patch_embed.proj.weight" in state
    segmentor = create_model("segformer_b0", num_classes=5)
    initialise_from(segmentor, out)
    for key, tensor in encoder.state_dict().items():
        assert torch.equal(segmentor.encoder.state_dict()[key], tensor), key


def test_encoder_only_from_a_full_checkpoint(tmp_path, capsys):
    original = trained_like("segformer_b0")
    src, out = tmp_path / "teacher.pth", tmp_path / "enc.safetensors"
    torch.save(authors_distiller_checkpoint(original), src)
    code, stdout, stderr = convert(capsys, src, "-o", out, "--encoder-only")
    assert code == 0, stderr
    state, meta = read_safetensors(out)
    assert meta["architecture"] == "mit_b0" and meta["kind"] == "encoder"
    assert all(torch.equal(state[k], v) for k, v in original.encoder.state_dict().items())


def hf_segformer_folder(tmp_path, transformers):
    """save_pretrained of a random B0-sized SegformerForSemanticSegmentation, offline."""
    torch.manual_seed(3)
    labels = {i: f"class{i}" for i in range(5)}
    config = transformers.SegformerConfig(
        hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256,
        num_labels=5, id2label=labels, label2id={v: k for k, v in labels.items()})
    hf = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for key, tensor in hf.state_dict().items():
            if key.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    folder = tmp_path / "hf-b0"
    hf.save_pretrained(folder)
    return hf, folder


def with_hf_layer_norm_eps(net: torch.nn.Module) -> torch.nn.Module:
    """Transformers builds every Segformer LayerNorm with eps 1e-5; ours keep NVlabs' 1e-6."""
    for module in net.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-5
    return net


def test_hf_folder_converts_and_matches_transformers(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    hf, folder = hf_segformer_folder(tmp_path, transformers)
    out = tmp_path / "from_hf.safetensors"
    code, stdout, stderr = convert(capsys, folder, "-o", out)
    assert code == 0, stderr
    assert "inferred  segformer_b0 from config.json" in stdout and "heads 1/2/5/8" in stdout
    assert "eps 1e-5" in stdout and "5 names from config.json id2label" in stdout
    ours = with_hf_layer_norm_eps(load_student(out).eval())
    with torch.no_grad():
        expected = hf(pixel_values=PIXELS).logits
        gap = (ours(PIXELS) - expected).abs().max().item()
    assert gap < 1e-4 and expected.abs().max().item() > 1e-2
    assert read_safetensors(out)[1]["class_names"] == [f"class{i}" for i in range(5)]


def test_export_to_hf_loads_in_transformers_and_comes_back_exactly(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    original = trained_like("segformer_b0", num_classes=20)
    student = tmp_path / "student.safetensors"
    torch.save(authors_flat(original), tmp_path / "b0.pth")
    assert convert(capsys, tmp_path / "b0.pth", "-o", student, "--dataset", "cityscapes")[0] == 0
    folder = tmp_path / "hf"
    code, stdout, stderr = convert(capsys, student, "-o", folder, "--to", "hf")
    assert code == 0, stderr
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    hf, info = transformers.SegformerForSemanticSegmentation.from_pretrained(
        folder, output_loading_info=True, local_files_only=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.id2label[0] == "road" and hf.config.id2label[19] == "void"
    ours = with_hf_layer_norm_eps(load_student(student).eval())
    with torch.no_grad():
        assert (hf.eval()(pixel_values=PIXELS).logits - ours(PIXELS)).abs().max().item() < 1e-4
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["do_normalize"] is False  # the authors' [0, 1] inputs
    back = tmp_path / "back.safetensors"
    assert convert(capsys, folder, "-o", back)[0] == 0
    assert_same_outputs(load_student(back), original)


def test_export_to_nvlabs_is_a_plain_tensor_dict(tmp_path, capsys):
    original = trained_like("pvtv2_b0_fpn", num_classes=7)
    student = tmp_path / "student.safetensors"
    torch.save(export_state_dict(original, "nvlabs"), tmp_path / "pvt.pth")
    assert convert(capsys, tmp_path / "pvt.pth", "-o", student)[0] == 0
    exported = tmp_path / "pvt_nvlabs.pth"
    code, _, stderr = convert(capsys, student, "-o", exported, "--to", "nvlabs")
    assert code == 0, stderr
    state = torch.load(exported, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state.keys() == export_state_dict(original, "nvlabs").keys()
    code, _, err = convert(capsys, student, "-o", tmp_path / "pvt_hf", "--to", "hf")
    assert code == 2 and "add --encoder-only" in err and not (tmp_path / "pvt_hf").exists()


class RunsAShellCommand:
    """Unpickling this would run ``touch`` — a stand-in for any code a pickle can carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickled_code_is_refused_and_nothing_runs_or_is_written(tmp_path, capsys, writer):
    marker, src, out = tmp_path / "pwned", tmp_path / "evil.pth", tmp_path / "out.safetensors"
    payload = {"state_dict": {"patch_embed1.proj.weight": torch.zeros(1)},
               "hook": RunsAShellCommand(marker)}
    if writer == "torch.save":
        torch.save(payload, src)
    else:
        src.write_bytes(pickle.dumps(payload, protocol=2))  # torch.save's protocol
    code, _, err = convert(capsys, src, "-o", out)
    assert code == 2
    assert err.startswith("error: ") and "cannot be loaded safely as plain tensors" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists() and not out.exists()
    assert os.listdir(tmp_path) == ["evil.pth"]


def test_existing_output_needs_force(tmp_path, capsys):
    src, out = tmp_path / "b0.pth", tmp_path / "out.safetensors"
    torch.save(authors_flat(trained_like("segformer_b0")), src)
    out.write_bytes(b"keep me")
    code, _, err = convert(capsys, src, "-o", out)
    assert code == 2 and "already exists; pass --force" in err and out.read_bytes() == b"keep me"
    assert convert(capsys, src, "-o", out, "--force")[0] == 0
    assert load_student(out).model_name == "segformer_b0"
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, _, err = convert(capsys, out, "-o", folder, "--to", "hf", "--force")
    assert code == 2 and "not a model folder" in err and (folder / "notes.txt").exists()


def test_failed_conversion_leaves_no_file(tmp_path, capsys):
    state = authors_flat(trained_like("segformer_b0"))
    del state["block2.1.attn.q.weight"]
    torch.save(state, tmp_path / "broken.pth")
    code, _, err = convert(capsys, tmp_path / "broken.pth", "-o", tmp_path / "out.safetensors")
    assert code == 2 and "1 missing (block2.1.attn.q.weight)" in err
    assert os.listdir(tmp_path) == ["broken.pth"]


@pytest.fixture(scope="module")
def distiller_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("authors") / "model_TransKDBase_best.pth"
    torch.save(authors_distiller_checkpoint(trained_like("segformer_b0")), path)
    return path


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "segformer_x9"], "known models: lvt, lvt_mlp, mit_b0, "),
    (["--num-classes", "19"], "--num-classes 19 does not match"),
    (["--num-classes", "0"], "--num-classes must be at least 1"),
    (["--dataset", "camvid"], "dataset camvid names 11 classes but the model predicts 20"),
    (["--dataset", "nowhere"], "unknown dataset 'nowhere'"),
    (["--model", "mit_b0", "--num-classes", "20"], "mit_b0 is an encoder and has no classes"),
    (["--prefix", "teacher"], "no tensors under 'teacher'"),
    (["--to", "nvlabs"], "name --output with .pth"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, distiller_file, argv, message):
    code, _, err = convert(capsys, distiller_file, "-o", tmp_path / "out.safetensors", *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_mmseg_export_of_a_segformer_keeps_the_encoder_only(tmp_path, capsys, distiller_file):
    out = tmp_path / "mmseg.pth"
    code, _, err = convert(capsys, distiller_file, "-o", out, "--to", "mmseg")
    assert code == 2 and "add --encoder-only" in err and not out.exists()
    code, stdout, stderr = convert(capsys, distiller_file, "-o", out, "--to", "mmseg", "--encoder-only")
    assert code == 0, stderr
    assert "mit_b0 encoder" in stdout
    state = torch.load(out, weights_only=True)
    expected = trained_like("segformer_b0").state_dict()["encoder.stages.1.blocks.0.attn.proj.weight"]
    assert torch.equal(state["layers.1.1.0.attn.attn.out_proj.weight"], expected)


def test_segmentor_without_head_weights_points_to_encoder_only(tmp_path, capsys):
    torch.save(export_state_dict(trained_like("mit_b0", None), "nvlabs"), tmp_path / "mit_b0.pth")
    code, _, err = convert(capsys, tmp_path / "mit_b0.pth", "-o", tmp_path / "out.safetensors",
                           "--model", "segformer_b0", "--num-classes", "19")
    assert code == 2 and "holds no decode-head weights" in err and "--encoder-only" in err
