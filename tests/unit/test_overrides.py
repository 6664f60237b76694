import pytest

from nnunet_ssl.overrides import ENV_VAR, apply_overrides, read_overrides


class Obj:
    num_epochs = 1000
    consistency_weight = 0.1
    name = "x"
    flag = False


def test_read_and_apply():
    o = Obj()
    values = read_overrides({ENV_VAR: '{"num_epochs": 2, "consistency_weight": 1, "flag": true}'})
    applied = apply_overrides(o, ["num_epochs", "consistency_weight", "flag"], values)
    assert o.num_epochs == 2 and o.consistency_weight == 1.0 and isinstance(o.consistency_weight, float)
    assert o.flag is True and applied["num_epochs"] == 2


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="JSON object"):
        read_overrides({ENV_VAR: "num_epochs=2"})
    with pytest.raises(ValueError, match="unknown setting"):
        apply_overrides(Obj(), ["num_epochs"], {"num_epoch": 2})
    with pytest.raises(ValueError, match="must be of type int"):
        apply_overrides(Obj(), ["num_epochs"], {"num_epochs": 2.5})
    assert read_overrides({}) == {}


def test_settings_a_method_ignores_are_not_its_hyperparameters():
    """ema_decay only where an EMA teacher exists; a base setting a method declares unused is refused."""
    from nnunet_ssl.catalog import shipped_trainers
    from nnunet_ssl.trainers.bcp import nnUNetTrainerBCP
    from nnunet_ssl.trainers.cps import nnUNetTrainerCPS
    from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher

    assert "ema_decay" in nnUNetTrainerMeanTeacher.hyperparameter_names()
    assert "ema_decay" not in nnUNetTrainerCPS.hyperparameter_names()  # no teacher
    assert "consistency_weight" not in nnUNetTrainerBCP.hyperparameter_names()
    with pytest.raises(ValueError, match="unknown setting"):
        apply_overrides(object(), nnUNetTrainerBCP.hyperparameter_names(), {"consistency_weight": 0.3})
    for name, cls in shipped_trainers().items():
        names = cls.hyperparameter_names()
        if not cls.teacher_sources:
            assert "ema_decay" not in names, name
        assert not set(cls.unused_hyperparameters) & set(names), name
