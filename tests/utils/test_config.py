import dataclasses

import pytest
from omegaconf import OmegaConf

import threestudio
from tests.conftest import REPO
from threestudio.utils.config import load_config, parse_structured
from threestudio.utils.errors import ConfigError

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "_base" not in p.parts)


REQUIRED = ["system.prompt_processor.prompt=a person", "system.face_image=x.png"]


STAGE_REQUIRED = {
    "ahds.yaml": REQUIRED,
    "refine.yaml": ["system.init_from=x"],
    "reconstruct.yaml": ["system.init_from=x"],
}


STACKS = [
    [REPO / "configs" / p.name] + ([p] if p.parent.name == "tiny" else []) for p in CONFIGS if p.name in STAGE_REQUIRED
] + [[REPO / "configs" / s, REPO / "configs" / "specular.yaml"] for s in ("ahds.yaml", "reconstruct.yaml")]


def test_every_registered_name_resolves():
    names = threestudio.registered_names()
    for n in (
        "anny-body",
        "smplx-body",
        "body-gaussian-geometry",
        "gsplat-renderer",
        "torch-splat-renderer",
        "faceid-controlnet-guidance",
        "view-prompt-processor",
        "insightface-face-id",
        "human-camera-datamodule",
        "refined-views-datamodule",
        "gaussianip-ahds-system",
        "gaussianip-refine-system",
        "gaussianip-reconstruct-system",
    ):
        assert n in names
    for n in names:  # every plugin declares its options the same way: a nested dataclass Config
        cls = threestudio.find(n)
        assert dataclasses.is_dataclass(cls.__dict__.get("Config")), f"{n}: no nested Config dataclass"


def test_unknown_plugin_suggests():
    with pytest.raises(KeyError, match="did you mean 'gsplat-renderer'"):
        threestudio.find("gsplat-rendrer")


@pytest.mark.parametrize("stack", STACKS, ids=["+".join(str(p.relative_to(REPO)) for p in s) for s in STACKS])
def test_every_config_loads_and_validates(stack):
    cfg = load_config(*stack, cli_args=STAGE_REQUIRED[stack[0].name])
    sys_cls = threestudio.find(cfg.system_type)
    parse_structured(sys_cls.Config, cfg.system)
    sys_cls.preflight(cfg.system, "export")  # strict parse of every plugin sub-config
    threestudio.find(cfg.data_type)(cfg.data)
    assert OmegaConf.missing_keys(cfg) == set()


def test_every_config_file_is_tested():
    assert {p for s in STACKS for p in s} == set(CONFIGS)


def test_composition_and_overrides():
    cfg = load_config(
        REPO / "configs" / "ahds.yaml",
        REPO / "configs" / "tiny" / "ahds.yaml",
        cli_args=REQUIRED + ["trainer.max_steps=7"],
    )
    assert cfg.trainer.max_steps == 7  # CLI wins
    assert cfg.data.height == 64  # later file wins
    assert cfg.data.batch_size == 2
    assert cfg.tag == "a_person"


def test_unknown_keys_are_errors():
    with pytest.raises(ConfigError, match="max_stepz.*max_steps"):
        load_config(REPO / "configs" / "ahds.yaml", cli_args=REQUIRED + ["trainer.max_stepz=3"])
    cfg = load_config(REPO / "configs" / "ahds.yaml", cli_args=REQUIRED + ["system.guidance.guidanse_scale=3"])
    with pytest.raises(ConfigError, match="guidanse_scale"):
        threestudio.find("faceid-controlnet-guidance")(cfg.system.guidance)
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(REPO / "configs" / "ahds.yaml", cli_args=["oops"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(REPO / "configs" / "nope.yaml")


def test_every_config_field_has_a_docstring():
    """Every option of every plugin, typed block (densify, lpips, face) and the experiment config is
    documented (``launch.py --show-config`` prints the docstrings)."""
    from omegaconf import DictConfig, OmegaConf

    from threestudio.utils.config import ExperimentConfig, field_docs

    undocumented, seen = [], set()

    def walk(cls):
        if cls in seen:
            return
        seen.add(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if not docs.get(f.name):
                undocumented.append(f"{cls.__qualname__}.{f.name}")
            node = OmegaConf.structured(cls)._get_node(f.name)
            if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
                walk(OmegaConf.get_type(node))

    for name in threestudio.registered_names():
        walk(threestudio.find(name).Config)
    walk(ExperimentConfig)
    assert len(seen) > len(threestudio.registered_names())  # the typed blocks were walked too
    assert not undocumented, undocumented
