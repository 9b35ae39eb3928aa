"""The built-in evaluation set: the demo evaluates on at least 5 photographs that ship with the installed packages."""

import hashlib

import torch

from feds_lab.data import (BUILTIN_EVAL, BUILTIN_EVAL_SET, builtin_eval_images, builtin_split, eval_images,
                           load_dataset)
from feds_lab.pipeline import PipelineConfig


def test_the_builtin_evaluation_set_has_enough_independent_images():
    images = eval_images(BUILTIN_EVAL_SET, "all")
    assert [n for n, _ in images] == list(BUILTIN_EVAL) and len(images) >= 5
    assert [n for n, _ in eval_images(BUILTIN_EVAL_SET, "val")] == list(BUILTIN_EVAL)  # evaluation only
    for name, x in images:
        assert x.shape[0] == 1 and x.shape[1] == 3 and min(x.shape[-2:]) >= 256, name
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    # no image twice, and none of them is (a view of) a training image
    digests = {hashlib.sha256(x.numpy().tobytes()).hexdigest() for _, x in images}
    assert len(digests) == len(images)
    train = dict(builtin_split("train"))
    assert not set(train) & set(BUILTIN_EVAL)
    assert "motorcycle_right" not in BUILTIN_EVAL  # the stereo twin of a training image
    for name, x in images:
        for tname, t in train.items():
            if t.shape[-2:] == x.shape[-2:]:
                assert (t - x[0]).abs().mean() > 0.05, (name, tname)
    # gray-level photographs are coded as RGB with three equal channels
    camera = dict(images)["camera"][0]
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[1], camera[2])
    assert len(load_dataset(None, "train", 128)) == 6  # training is unchanged


def test_the_demo_evaluates_on_it_and_other_data_does_not(tmp_path):
    demo = PipelineConfig().resolved()
    assert (demo.eval_data, demo.eval_split) == (BUILTIN_EVAL_SET, "all")
    assert demo.resolved().eval_data == BUILTIN_EVAL_SET  # resolving again (in a notebook) keeps it
    assert len(eval_images(demo.eval_data, demo.eval_split)) == len(builtin_eval_images())
    (tmp_path / "photos").mkdir()
    own = PipelineConfig(data=str(tmp_path / "photos")).resolved()
    assert (own.eval_data, own.eval_split) == (None, "val")  # a user's folder: its own validation split
    kodak = PipelineConfig(eval_data=str(tmp_path / "photos"), eval_split="all").resolved()
    assert kodak.eval_data == str(tmp_path / "photos")
    assert PipelineConfig(eval_split="val", eval_data="builtin").resolved().eval_data == "builtin"  # asked for
