"""The one option converter: every kind of option gets the same one-sentence errors."""

from dataclasses import dataclass

import pytest

from transkd.cli import main
from transkd.config import load_config
from transkd.data.datasets import build_dataset, check_dataset_options
from transkd.distill import parse_method, parse_method_options
from transkd.errors import ConfigError
from transkd.options import Keys, convert

DISTIL = ["distill.method=transkd_base", "teacher.weights=t.safetensors"]

#: (overrides, the sentence's full dotted key, the closest valid name it suggests)
TYPOS = {
    "run key": (["train.batch_sise=4"], "'train.batch_sise'", "'train.batch_size'"),
    "method option": ([*DISTIL, "distill.options={embed_weight: [1, 1, 1, 1]}"],
                      "'distill.options.embed_weight'", "'distill.options.embed_weights'"),
    "option of one of several methods": (
        ["distill.method=transkd_base+kd", "teacher.weights=t.safetensors",
         "distill.options={transkd_base: {}, kd: {temprature: 2}}"],
        "'distill.options.kd.temprature'", "'distill.options.kd.temperature'"),
    "dataset option": (["data.options={lenght: 8}"], "'data.options.lenght'", "'data.options.length'"),
    "validation dataset option": (["data.val_options={sise: 64}"], "'data.val_options.sise'",
                                  "'data.val_options.size'"),
    "protocol option": (["protocol.crop_sise=[64, 64]"], "'protocol.crop_sise'", "'protocol.crop_size'"),
    "model option": (["model.options={drop_path_rat: 0.1}"], "'model.options.drop_path_rat'",
                     "'model.options.drop_path_rate'"),
    "model head option": (["model.name=pvtv2_b0_fpn", "model.options={dropot: 0.1}"],
                          "'model.options.dropot'", "'model.options.dropout'"),
}


@pytest.mark.parametrize("kind", list(TYPOS))
def test_a_typo_names_the_full_key_and_the_closest_name(kind):
    overrides, key, closest = TYPOS[kind]
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    text = str(info.value)
    assert text == f"unknown config key {key}; did you mean {closest}?"


@pytest.mark.parametrize("kind", list(TYPOS))
def test_a_typo_is_one_sentence_and_exit_code_2_on_the_command_line(kind, capsys, tmp_path):
    overrides, key, closest = TYPOS[kind]
    args = ["train", "--output", str(tmp_path / "run")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"error: unknown config key {key}; did you mean {closest}?"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    (["distill.method=kd", "teacher.weights=t.safetensors", "distill.options={temperature: 0}"],
     "config key 'distill.options.temperature' must be a finite number > 0, got 0.0"),
    (["data.options={size: big}"],
     "config key 'data.options.size' must be an integer or a list of integers, got 'big'"),
    (["protocol.crop_size=[512]"], "config key 'protocol.crop_size' must be a list of 2 integers or null, "
                                   "got [512]"),
    (["protocol.flip_prob=1.5"], "config key 'protocol.flip_prob' must be a probability in [0, 1], got 1.5"),
    (["optim.betas=[0.9, fast]"], "config key 'optim.betas[1]' must be a number, got 'fast'"),
    (["optim.lr=.inf"], "config key 'optim.lr' must be a finite number, got inf"),
    (["train.seed=1.0"], "config key 'train.seed' must be an integer, got 1.0"),
    (["train.tensorboard=1"], "config key 'train.tensorboard' must be true or false, got 1"),
    (["optim=3"], "config key 'optim' must be a section (a mapping), got 3"),
])
def test_wrong_values_say_what_was_expected_and_given(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value) == message


def test_outside_a_config_the_same_converter_names_the_owner():
    with pytest.raises(ConfigError, match=r"^unknown option 'temprature' for method 'kd'; did you mean "
                                          r"'temperature'\?$"):
        parse_method_options("kd", {"temprature": 2.0})
    with pytest.raises(ConfigError, match=r"^unknown option 'lenght' for dataset 'synthetic'; did you "
                                          r"mean 'length'\?$"):
        build_dataset("synthetic", length=None, lenght=3)
    check_dataset_options("synthetic", {"length": 3, "size": [32, 64]})
    assert parse_method_options("kd+fitnet", {"kd": {"temperature": 4}})["kd"].temperature == 4.0


def test_method_strings_are_read_in_one_place():
    assert parse_method("transkd_base + kd") == ["transkd_base", "kd"]
    assert parse_method("none") == [] and parse_method("") == []
    with pytest.raises(ConfigError, match="names a method twice"):
        parse_method("kd+kd")


def test_converter_on_a_plain_dataclass():
    @dataclass
    class Inner:
        size: tuple[int, int] = (1, 2)

    @dataclass
    class Outer:
        inner: Inner

    value = convert(Outer, {"inner": {"size": [3, 4]}})
    assert value.inner.size == (3, 4)
    with pytest.raises(ConfigError, match=r"^unknown thing 'x.inner.sise'; did you mean 'x.inner.size'\?$"):
        convert(Outer, {"inner": {"sise": [3, 4]}}, Keys("x.", noun="thing"))
    with pytest.raises(ConfigError, match=r"^thing 'x.inner' is required$"):
        convert(Outer, {}, Keys("x.", noun="thing"))
