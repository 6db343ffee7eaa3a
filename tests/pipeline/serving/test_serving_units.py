"""Pieces of the served model without MLflow runs: request decoding, config, version tags, signature."""

from __future__ import annotations

import base64
import io

import pandas as pd
import pytest
from PIL import Image

from pipeline.params import ParamsError, params_from_dict
from pipeline.serving.config import ServingConfig
from pipeline.serving.registry import version_tags


def _png(size=(30, 20), color=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_requests_decode_from_bytes_or_base64_and_name_the_bad_row():
    from mlflow.exceptions import MlflowException

    from pipeline.serving.model import decode_images

    gray = Image.new("L", (8, 6), 128)
    buffer = io.BytesIO()
    gray.save(buffer, format="JPEG")
    images = decode_images(pd.DataFrame({"image": [_png(), base64.b64encode(_png((5, 7))).decode(),
                                                   buffer.getvalue()]}))
    assert [(i.mode, i.size) for i in images] == [("RGB", (30, 20)), ("RGB", (5, 7)), ("RGB", (8, 6))]
    assert images[0].getpixel((3, 3)) == (10, 200, 30)
    with pytest.raises(MlflowException, match=r"row 1 of column 'image' is not an encoded image"):
        decode_images(pd.DataFrame({"image": [_png(), b"GIF89a nonsense"]}))
    with pytest.raises(MlflowException, match=r"row 0 .*not an encoded image"):
        decode_images(pd.DataFrame({"image": [_png()[:40]]}))  # truncated
    with pytest.raises(MlflowException, match=r"a DataFrame with a column 'image'"):
        decode_images(pd.DataFrame({"picture": [_png()]}))


def test_requests_decode_like_every_stage_exif_upright_and_16_bit_scaled():
    import numpy as np

    from pipeline.serving.model import decode_images

    exif = Image.Exif()
    exif[0x0112] = 8
    phone, grey16 = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(phone, format="JPEG", exif=exif.tobytes())
    Image.fromarray(np.full((6, 8), 40000, np.uint16)).save(grey16, format="PNG")
    upright, grey = decode_images(pd.DataFrame({"image": [phone.getvalue(), grey16.getvalue()]}))
    assert upright.size == (20, 30)  # the frame the user sees: boxes come back in it
    assert grey.getpixel((0, 0)) == (40000 >> 8,) * 3  # scaled, not saturated to white


def test_serving_config_checks_and_names_unknown_keys():
    assert ServingConfig.from_mapping({"min_size": 40, "max_size": 60}).to_dict() == {
        "min_size": 40, "max_size": 60, "score_threshold": 0.0, "batch_size": 8, "device": "auto"}
    with pytest.raises(ValueError, match=r"unknown keys \['min_sise'\]"):
        ServingConfig.from_mapping({"min_sise": 40})
    with pytest.raises(ValueError, match="min_size <= max_size"):
        ServingConfig(min_size=80, max_size=60)
    with pytest.raises(ValueError, match="score_threshold"):
        ServingConfig(score_threshold=1.5)


def test_version_tags_carry_commit_experiment_and_val_metrics():
    run_tags = {"git_commit": "abc-dirty", "dvc_exp_name": "", "params_hash": "h", "mlflow.user": "me"}
    assert version_tags(run_tags, {"AP": 0.123456, "AP50": 1, "loss": 0.3, "AP75": None}) == {
        "git_commit": "abc-dirty", "params_hash": "h", "val_AP": "0.1235", "val_AP50": "1.0000"}
    assert version_tags({}, None) == {}


def test_signature_declares_a_binary_image_column_and_the_threshold_param():
    from pipeline.serving.export import input_example, signature

    sig = signature(0.25)
    assert sig.inputs.to_dict() == [{"type": "binary", "name": "image", "required": True}]
    assert sig.outputs.input_names() == ["boxes", "scores", "labels", "class_names", "width", "height"]
    assert sig.params.to_dict() == [{"name": "score_threshold", "type": "double", "default": 0.25, "shape": None}]
    example = input_example()
    assert list(example.columns) == ["image"] and Image.open(io.BytesIO(example["image"][0])).size == (64, 48)


@pytest.mark.parametrize("alias", ["latest", "v3", "V12", "two words", ""])
def test_unusable_aliases_are_rejected_in_the_params(alias):
    with pytest.raises(ParamsError, match="mlflow.registered_model_alias"):
        params_from_dict({"mlflow": {"registered_model_alias": alias}})
    assert params_from_dict({"mlflow": {"registered_model_alias": None}}).mlflow.registered_model_alias is None
