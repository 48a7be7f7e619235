"""r2/recipes.py: one recipe per dataset holds every per-dataset value, and every module reads it from there."""
import pytest

from r2 import datasets, recipes
from r2.decode import decode_config_for
from r2.errors import ConfigError, R2Error
from r2.losses import loss_config_for
from r2.model import config_for
from r2.recipes import DATASETS, Schedule, recipe

# The paper's values (SPEC §3, §5, §6, §7), written out by hand: (dropout, saliency weight, unit, nms, schedule,
# trained frames).
EXPECTED = {
    "qvhighlights": (0.5, 0.1, 2.0, "hard", Schedule(128, 30, 5e-4, 20, 500, passes=4), 75),
    "charades": (0.35, 0.01, 0.1, "soft", Schedule(32, 50, 2.5e-4, 30, 500), 194),
    "tacos": (0.5, 0.05, None, "soft", Schedule(32, 100, 2.5e-4, 50, 500), 701),
    "ego4d": (0.3, 0.1, None, "soft", Schedule(32, 30, 2.5e-4, 20, 500), 600),
    "youtube": (0.5, 0.1, None, None, Schedule(4, 200, 5e-4, None, 50), 741),
    "tvsum": (0.5, 0.1, None, None, Schedule(4, 500, 5e-4, None, 50), 223),
    "demo": (0.1, 0.1, 2.0, "hard", Schedule(16, 12, 1e-3, 10, 100), 75),
    "custom": (0.1, 0.1, 2.0, "hard", Schedule(16, 30, 1e-3, 20, 100), 75),
}


def test_every_dataset_has_its_paper_values():
    assert DATASETS == ("qvhighlights", "charades", "tacos", "ego4d", "youtube", "tvsum", "demo", "custom")
    for name, (dropout, sal_weight, unit, nms, schedule, frames) in EXPECTED.items():
        r = recipe(name)
        assert (r.name, r.dropout, r.sal_weight, r.unit, r.nms, r.schedule, r.trained_frames) == (
            name, dropout, sal_weight, unit, nms, schedule, frames)
    assert [n for n in DATASETS if recipe(n).highlight_only] == ["youtube", "tvsum"]
    assert [n for n in DATASETS if recipe(n).cap_warmup] == ["custom"]
    assert recipe("qvhighlights").paper["test"][1]["mAP"] == 46.17
    assert recipe("tvsum").paper["val"][1]["Avg."] == 85.2 and not recipe("demo").paper


def test_modules_read_the_recipe():
    """The model variant, loss and decoding settings come from the one recipe: highlight_only decides the model's
    TEF / levels / boundary head, the soft class loss and saliency-only decoding together."""
    for name in DATASETS:
        r = recipe(name)
        model = config_for(name, 64, 48, 5, 4)
        loss, dec = loss_config_for(name), decode_config_for(name)
        assert model.dropout == r.dropout and loss.sal_weight == r.sal_weight
        assert (dec.unit, dec.nms) == (r.unit, r.nms)
        assert {model.tef, model.boundary, len(model.strides) > 1} == {not r.highlight_only}
        assert loss.soft_cls == dec.soft_cls == r.highlight_only
        assert datasets.dataset_info(name) is r.info
    assert datasets.DATASETS is recipes.DATASETS


def test_one_lookup_one_message_any_case():
    assert recipe("TACoS") is recipe("tacos") and datasets.dataset_info("TVSum").name == "tvsum"
    assert loss_config_for("Charades").sal_weight == 0.01 and decode_config_for("QVHighlights").nms == "hard"
    message = ("dataset 'kinetics' not supported; available datasets = qvhighlights, charades, tacos, ego4d, "
               "youtube, tvsum, demo, custom")
    for lookup in (recipe, datasets.dataset_info, loss_config_for, decode_config_for,
                   lambda n: config_for(n, 64, 48, 5, 4)):
        with pytest.raises(ConfigError) as e:
            lookup("kinetics")
        assert str(e.value) == message and isinstance(e.value, R2Error)


def test_recipes_are_frozen():
    with pytest.raises(AttributeError):
        recipe("demo").dropout = 0.3
    with pytest.raises(AttributeError):
        recipe("demo").schedule.epochs = 1
