"""Loop settings: a model reference is never a way into the file system; overrides keep the
training configs' bounds."""

import typing
from dataclasses import fields
from pathlib import Path

import pytest

from annotation import loop as loop_module
from annotation.errors import InvalidInput
from annotation.loop import OVERRIDES, REFUSED_OVERRIDES, LoopSettings
from annotation.models import ModelVersion, Project
from annotation.services import rounds
from tests.factories import ProjectFactory


@pytest.fixture
def roots(tmp_path, settings):
    """A model root with one model, an artifact root, and a secret folder outside both."""
    models = tmp_path / "models"
    (models / "pi0").mkdir(parents=True)
    (models / "pi0" / "config.json").write_text("{}")
    secret = tmp_path / "var"
    secret.mkdir()
    (secret / "tandem.sqlite3").write_text("password hashes")
    settings.TANDEM_MODEL_ROOTS = [models]
    settings.TANDEM_ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.TANDEM_ARTIFACT_ROOT.mkdir()
    return {"models": models, "secret": secret, "artifacts": settings.TANDEM_ARTIFACT_ROOT}


def refused(data, field, **kwargs):
    with pytest.raises(InvalidInput) as error:
        LoopSettings.parse(data, **kwargs)
    assert error.value.errors[0]["field"] == field, error.value.errors
    return error.value


@pytest.mark.parametrize(
    "reference",
    ["sshleifer/tiny-gpt2", "gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "org/name_v1.2-x", "tiny-policy"],
)
def test_hub_ids_pass_without_touching_the_disk(reference, monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError("a hub id must not touch the disk")

    monkeypatch.setattr(Path, "resolve", no_disk)
    monkeypatch.setattr(Path, "exists", no_disk)
    assert LoopSettings.parse({"policy_model": reference}).policy_model == reference
    assert LoopSettings.parse({"reward_backbone": reference}).reward_backbone == reference


def test_minilm_stays_the_bundled_keyword():
    assert LoopSettings.parse({}).reward_backbone == "minilm"


@pytest.mark.django_db
def test_paths_outside_the_model_roots_are_refused(roots, settings):
    project = ProjectFactory()
    for reference in [
        "/",
        "/etc",
        str(roots["secret"]),
        str(roots["artifacts"]),
        str(settings.MEDIA_ROOT),
        str(roots["models"]),  # the root itself is not a model
        str(roots["models"] / "pi0" / ".." / ".." / "var"),
        str(roots["models"] / "missing"),
        str(roots["artifacts"] / f"project-{project.pk + 1}"),
        "../var",
        "var/artifacts/project-1",
        "./pi0",
        "~/models",
        "org/../name",
        "a--b",
        "x" * 501,
        "org/" + "n" * 97,
        "pi0\x00",
        " gpt2",
    ]:
        for field in ("policy_model", "reward_backbone"):
            refused({field: reference}, field, project_id=project.pk)


@pytest.mark.django_db
def test_a_symlink_out_of_a_model_root_is_refused(roots):
    (roots["models"] / "escape").symlink_to(roots["secret"], target_is_directory=True)
    refused({"policy_model": str(roots["models"] / "escape")}, "policy_model")
    # The other way round: a link elsewhere to a model inside a root is that model.
    link = roots["secret"] / "link"
    link.symlink_to(roots["models"] / "pi0", target_is_directory=True)
    assert LoopSettings.parse({"policy_model": str(link)}).policy_model == str(link)


@pytest.mark.django_db
def test_a_model_root_and_the_projects_own_folder_are_allowed(roots):
    project = ProjectFactory()
    pi0 = roots["models"] / "pi0"
    assert LoopSettings.parse({"policy_model": str(pi0)}).policy_model == str(pi0)
    own = roots["artifacts"] / f"project-{project.pk}" / "pi0"
    own.mkdir(parents=True)
    assert LoopSettings.parse({"policy_model": str(own)}, project_id=project.pk)
    refused({"policy_model": str(own)}, "policy_model")  # not without the project
    other = ProjectFactory()
    refused({"policy_model": str(own)}, "policy_model", project_id=other.pk)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"generation": {"k": 10_000}}, "generation.k"),
        ({"generation": {"top_p": 0}}, "generation.top_p"),
        ({"generation": {"max_new_tokens": 10**9}}, "generation.max_new_tokens"),
        ({"generation": {"bogus": 1}}, "generation.bogus"),
        ({"reward": {"backbone": "/etc"}}, "reward.backbone"),
        ({"reward": {"backbone": "minilm"}}, "reward.backbone"),
        ({"reward": {"epochs": "8"}}, "reward.epochs"),
        ({"reward": {"batch_size": True}}, "reward.batch_size"),
        ({"reward": {"batch_size": 2.5}}, "reward.batch_size"),
        ({"reward": {"use_margin": None}}, "reward.use_margin"),
        ({"reward": {"truncation_side": "middle"}}, "reward.truncation_side"),
        ({"reward": {"learning_rate": float("nan")}}, "reward.learning_rate"),
        ({"policy": {"device": "cuda:0; rm -rf"}}, "policy.device"),
        ({"policy": {"lora_target_modules": "q_proj, ../x"}}, "policy.lora_target_modules"),
        ({"policy": {"beta": 0}}, "policy.beta"),
        ({"policy": {"loss": "ppo"}}, "policy.loss"),
        ({"policy": {"seed": -1}}, "policy.seed"),
        ({"policy": []}, "policy"),
        ({"generation": "k=4"}, "generation"),
        ({"policy_model": 7}, "policy_model"),
        ({"trigger_judgements": 10**12}, "trigger_judgements"),
    ],
)
def test_overrides_are_checked_key_by_key(overrides, field):
    refused(overrides, field)


def test_good_overrides_pass_and_ints_widen_for_float_fields():
    settings = LoopSettings.parse(
        {
            "reward": {"epochs": 8, "max_completion_length": None, "mean_pooling": True},
            "policy": {"lora_target_modules": "q_proj,v_proj", "precision": "fp32"},
            "generation": {"k": 64, "temperature": 0},
        }
    )
    assert settings.reward == {"epochs": 8.0, "max_completion_length": None, "mean_pooling": True}
    assert isinstance(settings.reward["epochs"], float)
    assert settings.generation == {"k": 64, "temperature": 0.0}


def _bounds_of(cls) -> dict[str, dict]:
    hints = typing.get_type_hints(cls)
    found = {}
    for f in fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        nullable = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if nullable else hint
        choices = None
        if typing.get_origin(base) is typing.Literal:
            choices, base = tuple(typing.get_args(base)), str
        found[f.name] = {
            "type": base,
            "nullable": nullable,
            "min": f.metadata.get("min"),
            "max": f.metadata.get("max"),
            "choices": f.metadata.get("choices", choices),
            "max_length": f.metadata.get("max_length"),
            "pattern": f.metadata.get("pattern"),
        }
    return found


def test_the_override_bounds_are_the_training_configs_own():
    """OVERRIDES is a copy (the web must not import torch): it must say what the dataclasses say."""
    from training.generation import GenerationConfig
    from training.policy import DPOConfig
    from training.reward import RewardConfig

    for group, cls in (
        ("reward", RewardConfig),
        ("policy", DPOConfig),
        ("generation", GenerationConfig),
    ):
        declared = _bounds_of(cls)
        assert set(OVERRIDES[group]) | set(REFUSED_OVERRIDES[group]) == set(declared), group
        for name, bound in OVERRIDES[group].items():
            expected = declared[name]
            got = {
                "type": bound.type,
                "nullable": bound.nullable,
                "min": bound.min,
                "max": bound.max,
                "choices": bound.choices,
                "max_length": bound.max_length,
                "pattern": bound.pattern,
            }
            assert got == expected, f"{group}.{name}"
            if expected["type"] in (int, float):
                assert bound.min is not None and bound.max is not None, f"{group}.{name}"
        # The edges of every range, and every choice, build a config the training code accepts.
        for name, bound in OVERRIDES[group].items():
            if bound.type in (int, float):
                for value in (bound.min, bound.max):
                    cls(**{name: bound.type(value)})
            for choice in bound.choices or ():
                cls(**{name: choice})


@pytest.mark.django_db
def test_stored_settings_refused_today_can_still_be_fixed(roots):
    project = ProjectFactory()
    Project.objects.filter(pk=project.pk).update(
        loop={"enabled": True, "policy_model": str(roots["secret"]), "samples_per_prompt": 8}
    )
    project.refresh_from_db()
    with pytest.raises(InvalidInput) as error:
        rounds.loop_configure(project=project, data={"human_share": 0.5})
    assert error.value.errors[0]["field"] == "policy_model"
    with pytest.raises(InvalidInput):
        rounds.round_start(project=project)
    assert LoopSettings.for_display(project).policy_model == str(roots["secret"])
    fixed = rounds.loop_configure(project=project, data={"policy_model": "org/pi0"})
    assert fixed.policy_model == "org/pi0" and fixed.samples_per_prompt == 8


@pytest.mark.django_db
def test_round_zero_registers_only_a_checked_reference(roots):
    project = ProjectFactory()
    link = roots["secret"] / "pi0-link"
    link.symlink_to(roots["models"] / "pi0", target_is_directory=True)
    rounds.loop_configure(project=project, data={"enabled": True, "policy_model": str(link)})
    rounds.round_start(project=project)
    base = ModelVersion.objects.get(project=project, kind="policy", round=0)
    # Registered as it resolved when checked: swapping the link later changes nothing.
    assert base.artifact_path == str((roots["models"] / "pi0").resolve())


@pytest.mark.django_db
def test_a_base_version_registered_before_the_checks_is_corrected(roots):
    project = ProjectFactory()
    ModelVersion.objects.create(
        project=project,
        kind="policy",
        round=0,
        name="π0 (base)",
        artifact_path=str(roots["secret"]),
    )
    rounds.loop_configure(project=project, data={"enabled": True, "policy_model": "org/pi0"})
    rounds.round_start(project=project)
    assert ModelVersion.objects.get(project=project, round=0).artifact_path == "org/pi0"


def test_the_module_keeps_hub_ids_to_the_hub_character_set():
    assert loop_module.is_hub_id("a/b") and not loop_module.is_hub_id("a/b/c")
    assert not loop_module.is_hub_id("/abs") and not loop_module.is_hub_id("a b")


@pytest.mark.django_db
def test_a_short_link_to_a_very_long_path_is_refused_not_a_500(roots):
    deep = roots["models"]
    for i in range(6):
        deep = deep / (f"{i}" * 100)
    deep.mkdir(parents=True)
    link = roots["models"] / "short"
    link.symlink_to(deep, target_is_directory=True)
    error = refused({"policy_model": str(link)}, "policy_model")
    assert "more than 500" in error.message
