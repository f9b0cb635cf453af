from pathlib import Path

import pytest
import yaml

from transkd.config import Config, config_from_dict, load_config, parse_override
from transkd.engine.optim import GROUP_NAMES, GroupRule, parameter_groups
from transkd.errors import ConfigError
from transkd.models import create_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_paper_recipe():
    config = load_config()
    assert config.optim.lr == 6e-5 and config.optim.weight_decay == 0.01
    assert config.optim.betas == (0.9, 0.999) and config.optim.eps == 1e-8
    assert config.schedule.kind == "paper" and config.schedule.power == 1.0
    assert config.schedule.horizon is None  # fixed: decay over the training length
    assert config.protocol.name == "paper" and config.train.batch_size == 2


def test_yaml_file_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 6e-5\ntrain:\n  batch_size: 4\n")  # YAML 1.1 reads 6e-5 as text
    config = load_config(path, ["optim.lr=1e-4", "train.precision=bf16", "eval.crop=[64, 128]",
                                "distill.method=none"])
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.train.batch_size == 4 and config.train.precision == "bf16"
    assert config.eval.crop == (64, 128)


def test_setting_iterations_replaces_epochs():
    config = load_config(None, ["train.iterations=50", "schedule.kind=standard", "schedule.warmup_iters=5"])
    assert config.train.epochs is None and config.train.iterations == 50
    config = load_config(None, ["train.iterations=50", "train.epochs=3"])
    assert config.train.epochs == 3 and config.train.iterations is None


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("bogus.key=1", "unknown config key 'bogus'"),
    ("train.batch_size=two", "config key 'train.batch_size' must be an integer, got 'two'"),
    ("train.batch_size=1.5", "config key 'train.batch_size' must be an integer"),
    ("optim.lr=-1", "config key 'optim.lr' must be positive"),
    ("optim.betas=[0.9]", "config key 'optim.betas' must be a list of 2 numbers"),
    ("train.precision=fp8", "config key 'train.precision' must be one of fp32, bf16, fp16"),
    ("train.deterministic=yes please", "config key 'train.deterministic' must be true or false"),
    ("train.batch_size=0", "config key 'train.batch_size' must be a positive integer"),
    ("protocol.flip_prob=2", "config key 'protocol.flip_prob'"),
    ("eval.mode=slide", "config key 'eval.crop'"),
    ("model.name=resnet", "config key 'model.name': unknown model 'resnet'"),
    ("model.name=mit_b0", "must name a segmentation model"),
    ("model.options={drop_pth: 0.1}", "unknown config key 'model.options.drop_pth'"),
    ("distill.method=nosuch", "config key 'distill.method': unknown distillation method"),
    ("distill.method=transkd_base", "config key 'teacher.weights' must name"),
    ("distill.options={alpha: 1}", "config key 'distill.options' must be empty for method 'none'"),
    ("data.name=mnist", "config key 'data.name' must be one of"),
    ("schedule.kind=paper", None),
])
def test_bad_values_name_the_dotted_key(override, message):
    if message is None:
        load_config(None, [override])
        return
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_paper_schedule_needs_epochs():
    with pytest.raises(ConfigError, match="'schedule.kind' 'paper' steps once per epoch"):
        load_config(None, ["train.iterations=10"])


def test_method_options_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="distill.options"):
        load_config(None, ["distill.method=transkd_base", "teacher.weights=t.safetensors",
                           "distill.options={no_such_option: 1}"])
    config = load_config(None, ["distill.method=transkd_base", "teacher.weights=t.safetensors",
                                "distill.options={hcl_weight: 2.0}"])
    assert config.distill.options == {"hcl_weight": 2.0}


def test_contradicting_horizons_are_rejected():
    with pytest.raises(ConfigError, match="schedule.horizon"):
        load_config(None, ["schedule.horizon=1500", "protocol.poly_horizon_epochs=1000"])
    config = load_config(None, ["protocol.poly_horizon_epochs=1500"])
    assert config.schedule_horizon() == 1500


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML at line"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)


def test_override_syntax():
    assert parse_override("optim.lr=1e-4") == ("optim.lr", 1e-4)
    assert parse_override("teacher.weights=") == ("teacher.weights", None)
    assert parse_override("data.root=/a b/c") == ("data.root", "/a b/c")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["optim.lr=1", "optim.lr.x=2"])


def test_resolved_config_round_trips_through_yaml():
    config = load_config(None, ["eval.scales=[0.5, 1.0, 1.5]", "protocol.image_size=[64, 128]"])
    again = config_from_dict(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert isinstance(Config().to_dict()["optim"]["betas"], list)


def _presets() -> list[Path]:
    return sorted(CONFIGS.rglob("*.yaml"))


def test_presets_exist_for_every_dataset_of_the_paper_and_camvid():
    names = {p.relative_to(CONFIGS).as_posix() for p in _presets()}
    for expected in ("cityscapes/teacher_b2_paper1000e.yaml",
                     "cityscapes/transkd_base_b2-b0_paper1000e.yaml",
                     "cityscapes/transkd_gl_b2-b0_paper1000e.yaml",
                     "cityscapes/transkd_ea_b2-b0_paper1000e.yaml",
                     "cityscapes/transkd_base_b2-lvt_paper1000e.yaml",
                     "cityscapes/teacher_pvtv2b2_paper1000e.yaml",
                     "cityscapes/transkd_base_pvtv2b2-pvtv2b0_paper1000e.yaml",
                     "cityscapes/transkd_gl_pvtv2b2-pvtv2b0_paper1000e.yaml",
                     "cityscapes/transkd_ea_pvtv2b2-pvtv2b0_paper1000e.yaml",
                     "acdc/transkd_ea_b2-b0_paper1000e.yaml",
                     "cityscapes/student_b0_paper500e.yaml",
                     "camvid/teacher_b2_cpu40e.yaml", "camvid/student_b0_cpu40e.yaml",
                     "camvid/transkd_base_b2-b0_cpu40e.yaml", "camvid/kd_b2-b0_cpu40e.yaml",
                     "camvid/cwd_b2-b0_cpu40e.yaml", "camvid/review_kd_b2-b0_cpu40e.yaml"):
        assert expected in names, expected


def test_presets_cover_every_baseline_ablation_and_dataset():
    names = {p.relative_to(CONFIGS).as_posix() for p in _presets()}
    for method in ("skd", "ifvd", "dist", "fitnet", "csf_only", "pea_only"):
        assert f"cityscapes/{method}_b2-b0_paper1000e.yaml" in names, method
    assert "cityscapes/transkd_base_b2-b0_pea4_paper1000e.yaml" in names
    assert load_config(CONFIGS / "cityscapes/transkd_base_b2-b0_pea4_paper1000e.yaml") \
        .distill.options["pea_stages"] == [4]
    for dataset, schedule in (("cityscapes", "standard160k"), ("ade20k", "standard160k"),
                              ("coco_stuff", "standard160k"),
                              ("voc", "standard40k"), ("nyuv2", "standard40k")):
        for stem in ("teacher_b2", "student_b0", "transkd_base_b2-b0"):
            assert f"{dataset}/{stem}_{schedule}.yaml" in names, (dataset, stem)


@pytest.mark.parametrize("dataset, crop, scale, batch, mode", [
    ("cityscapes", (1024, 1024), (2048, 1024), 1, "slide"),
    ("ade20k", (512, 512), (2048, 512), 2, "whole"),
])
def test_segformer_recipe_presets_are_the_published_protocol(dataset, crop, scale, batch, mode):
    """SegFormer's recipe (mmsegmentation 8 GPUs x batch; 160k iterations, AdamW 6e-5, head x10,
    no decay on norms and position embeddings, warm-up 1500 then poly 1)."""
    config = load_config(CONFIGS / dataset / "student_b0_standard160k.yaml")
    assert config.model.init == "pretrained/mit_b0.safetensors"
    assert config.protocol.name == "standard" and config.protocol.crop_size == crop
    assert config.protocol.scale == scale and config.protocol.ratio_range == (0.5, 2.0)
    assert config.train.iterations == 160_000 and config.train.batch_size == batch
    assert config.optim.lr == 6e-5 and config.optim.weight_decay == 0.01
    assert config.optim.head_lr_mult == 10 and set(config.optim.no_decay) == {"norm", "pos_embed"}
    assert config.schedule.kind == "standard" and config.schedule.warmup_iters == 1500
    assert config.schedule.power == 1 and config.schedule.min_lr_ratio == 0
    assert config.eval.mode == mode and config.data.selection == "last"


def _short(model: str) -> str:
    """A network as preset names spell it: segformer_b2 → b2, lvt_mlp → lvt,
    pvtv2_b0_authors_fpn → pvtv2b0."""
    return (model.removeprefix("segformer_").removesuffix("_mlp").removesuffix("_authors_fpn")
            .removesuffix("_fpn").replace("_", ""))


@pytest.mark.parametrize("path", _presets(), ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_preset_loads_and_validates(path):
    config = load_config(path)
    assert path.parent.name == config.data.name
    assert config.output.dir == f"runs/{config.data.name}/{path.stem}"
    student = _short(config.model.name)
    if config.method_names:
        teacher = _short(config.teacher.name)
        assert path.stem.startswith(f"{config.distill.method}_{teacher}-{student}_")
        assert config.teacher.weights is not None
        if config.teacher.weights.startswith("runs/"):  # another preset's run: that preset exists
            run = Path(config.teacher.weights).parts[2]
            assert (path.parent / f"{run}.yaml").is_file(), config.teacher.weights
    else:
        assert path.stem.split("_")[1] == student
    if config.optim.head_lr_mult != 1 or config.optim.no_decay:  # the groups build on this network
        network = create_model(config.model.name, num_classes=2)
        rule = GroupRule(config.optim.head_lr_mult, tuple(config.optim.no_decay))
        groups = parameter_groups(network, config.optim.lr, config.optim.weight_decay, rule, "")
        assert {g["name"] for g in groups} == set(GROUP_NAMES)


def test_a_warm_up_as_long_as_the_run_still_loads():
    """Refused when a run starts (see the trainer tests), so an old run folder still loads."""
    config = load_config(None, ["train.iterations=6", "schedule.kind=standard"])
    assert config.schedule.warmup_iters == 1500


def test_schedule_errors_suggest_the_fix():
    with pytest.raises(ConfigError, match=r"needs train.epochs .*, or use --set schedule.kind=standard$"):
        load_config(None, ["train.iterations=10"])


def test_interval_units_follow_the_training_length():
    assert load_config().train.interval_unit == "epochs"
    config = load_config(None, ["train.iterations=100", "schedule.kind=constant"])
    assert config.train.interval_unit == "iterations"
