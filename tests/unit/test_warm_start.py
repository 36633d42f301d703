"""init_from: a new run starts from another run's weights (a run directory, a LoRA directory, an
exported directory); its first evaluation measures exactly the weights the parent's last one did."""

import pytest

from rlzoo.config import ConfigError, compose_config, validate

T2I = ["task=t2i", "model=sd3_tiny", "reward=pickscore", "reward.tiny=true", "debug=tiny", "threads=1"]


def test_init_from_is_checked_before_any_model(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "lora" / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')
    for overrides, message in (
            (["task=shapes", f"init_from={tmp_path / 'nowhere'}"], "is not a directory"),
            (["task=shapes", f"init_from={tmp_path}"], "is not a run directory"),
            (["task=shapes", f"init_from={tmp_path / 'lora'}"], "is a LoRA and this run trains full weights"),
            ([*T2I, "model.lora.rank=8", f"init_from={tmp_path / 'lora'}"], "set model.lora.rank=4 model.lora.alpha=8")):
        with pytest.raises(ConfigError, match=message):
            validate(compose_config(overrides))


def test_a_run_with_a_checkpoint_resumes_whatever_init_from_says(tmp_path):
    """init_from decides only where a new run starts: once the run has a checkpoint, its parent may
    be gone (or the key changed) and the run still resumes."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"")
    validate(compose_config(["task=shapes", f"run_dir={tmp_path / 'run'}", f"init_from={tmp_path / 'gone'}"]))
    with pytest.raises(ConfigError, match="is not a directory"):
        validate(compose_config(["task=shapes", f"run_dir={tmp_path / 'new'}", f"init_from={tmp_path / 'gone'}"]))


@pytest.mark.parametrize("name,text,message", [("adapter_config.json", None, r"adapter_config.json \(.*\) cannot be read"),
                                               ("adapter_config.json", "{", r"adapter_config.json \(.*\) is not JSON"),
                                               ("adapter_config.json", '{"r": 4}', "has no r and lora_alpha")])
def test_a_broken_peft_lora_directory_is_one_line(tmp_path, name, text, message):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_model.safetensors").write_bytes(b"")
    if text is not None:
        (tmp_path / "lora" / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([*T2I, f"init_from={tmp_path / 'lora'}"]))


def test_a_parent_without_a_checkpoint_is_one_line(tmp_path):
    (tmp_path / "parent" / "checkpoints").mkdir(parents=True)
    (tmp_path / "parent" / "config.yaml").write_text("task: {name: shapes}\nmodel: {}\n")
    with pytest.raises(ConfigError, match="is a run directory without a checkpoint"):
        validate(compose_config(["task=shapes", f"init_from={tmp_path / 'parent'}"]))
