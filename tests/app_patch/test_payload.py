"""parse_result: a bad result fails its own image, named, before anything touches Redis."""

import copy

import pytest

from blipguard.app_patch.errors import InvalidResult
from blipguard.app_patch.payload import ParsedResult, best_image_id, parse_result


def blamed_image(exc: InvalidResult, data) -> int | None:
    """The image an invalid result is charged to: the one the error names, else the
    payload's best guess (the result task's order when the NATS task can't be read)."""
    return exc.image_id if exc.image_id is not None else best_image_id(data)


def pipeline_response(image_ids=(12,), detections_per_image=2) -> dict:
    """A processing service's pipeline response, shaped like the simulator's."""
    return {
        "source_images": [{"id": i, "url": f"https://example.org/{i}.jpg"} for i in image_ids],
        "detections": [
            {"source_image_id": i, "bbox": [k, k, k + 10.5, k + 10], "label": "moth", "score": 0.9}
            for i in image_ids
            for k in range(detections_per_image)
        ],
    }


def test_valid_pipeline_response_is_parsed():
    r = parse_result(pipeline_response((12, 13), detections_per_image=3))
    assert r == ParsedResult(image_ids=(12, 13), failed_ids=(), error=None, detections=6)


def test_response_without_detections_is_valid():
    r = parse_result({"source_images": [{"id": 5}]})
    assert r.image_ids == (5,) and r.detections == 0 and r.error is None


def test_parse_does_not_modify_the_payload():
    data = pipeline_response((1, 2))
    before = copy.deepcopy(data)
    parse_result(data)
    assert data == before


def test_error_result_fails_its_image():
    r = parse_result({"error": "CUDA out of memory", "image_id": 7})
    assert r == ParsedResult(image_ids=(7,), failed_ids=(7,), error="CUDA out of memory", detections=0)


def test_error_result_message_is_truncated():
    r = parse_result({"error": "x" * 10_000, "image_id": 7})
    assert len(r.error) == 500


def test_error_result_with_string_image_id():
    assert parse_result({"error": "boom", "image_id": "7"}).image_ids == (7,)


@pytest.mark.parametrize("image_id", [None, "abc", True, 7.0, [7]])
def test_error_result_without_a_usable_image_id_is_invalid(image_id):
    data = {"error": "boom"} if image_id is None else {"error": "boom", "image_id": image_id}
    with pytest.raises(InvalidResult, match="image_id"):
        parse_result(data)


@pytest.mark.parametrize("data", [None, [], ["source_images"], "{}", 12, b"{}"], ids=repr)
def test_non_object_result_is_invalid(data):
    with pytest.raises(InvalidResult, match="JSON object") as info:
        parse_result(data)
    assert info.value.image_id is None


@pytest.mark.parametrize("images", [None, [], {}, "12"], ids=repr)
def test_missing_or_empty_source_images_is_invalid(images):
    data = {"detections": []} if images is None else {"source_images": images}
    with pytest.raises(InvalidResult, match="source_images") as info:
        parse_result(data)
    assert info.value.image_id is None


def test_missing_source_images_still_names_the_image_when_known():
    with pytest.raises(InvalidResult) as info:
        parse_result({"image_id": 31, "detections": []})
    assert info.value.image_id == 31


def test_string_image_id_is_accepted_as_integer():
    data = pipeline_response((12,))
    data["source_images"][0]["id"] = "12"
    for det in data["detections"]:
        det["source_image_id"] = "12"
    assert parse_result(data).image_ids == (12,)


def test_detection_may_name_its_image_as_string_or_int():
    data = pipeline_response((12,))
    data["detections"][0]["source_image_id"] = "12"
    assert parse_result(data).detections == 2


@pytest.mark.parametrize("bad_id", ["abc", "", "12.5", True, False, 12.0, None, {"id": 1}], ids=repr)
def test_source_image_id_that_is_not_an_integer_is_invalid(bad_id):
    data = pipeline_response((12,), detections_per_image=0)
    data["source_images"].append({"id": bad_id})
    with pytest.raises(InvalidResult, match=r"source_images\[1\]\.id") as info:
        parse_result(data)
    assert blamed_image(info.value, data) == 12  # the first good id is the best guess


def test_source_image_entry_that_is_not_an_object_is_invalid():
    with pytest.raises(InvalidResult, match=r"source_images\[0\]"):
        parse_result({"source_images": [12]})


def test_detections_not_a_list_is_invalid():
    data = pipeline_response((4,))
    data["detections"] = {"0": data["detections"][0]}
    with pytest.raises(InvalidResult, match="detections") as info:
        parse_result(data)
    assert info.value.image_id == 4


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, 3, 4, 5], [], None, "1,2,3,4", (1, 2, 3, 4)], ids=repr)
def test_bbox_must_be_a_list_of_four(bbox):
    data = pipeline_response((8,))
    data["detections"][1]["bbox"] = bbox
    with pytest.raises(InvalidResult, match=r"detections\[1\]`\.bbox") as info:
        parse_result(data)
    assert info.value.image_id == 8


@pytest.mark.parametrize("coord", ["1", None, True, [1]], ids=repr)
def test_bbox_coordinates_must_be_numbers(coord):
    data = pipeline_response((8,))
    data["detections"][0]["bbox"] = [0, coord, 10, 10]
    with pytest.raises(InvalidResult, match=r"detections\[0\]`\.bbox"):
        parse_result(data)


@pytest.mark.parametrize("score", ["0.9", None, True, [0.9]], ids=repr)
def test_score_must_be_a_number(score):
    data = pipeline_response((8,))
    data["detections"][0]["score"] = score
    with pytest.raises(InvalidResult, match=r"detections\[0\]`\.score") as info:
        parse_result(data)
    assert blamed_image(info.value, data) == 8


@pytest.mark.parametrize("score", [0, 1, 0.5])
def test_integer_and_float_scores_are_accepted(score):
    data = pipeline_response((8,))
    data["detections"][0]["score"] = score
    assert parse_result(data).detections == 2


@pytest.mark.parametrize("label", [None, 3, ["moth"]], ids=repr)
def test_label_must_be_a_string(label):
    data = pipeline_response((8,))
    data["detections"][0]["label"] = label
    with pytest.raises(InvalidResult, match=r"detections\[0\]`\.label"):
        parse_result(data)


def test_detection_naming_an_image_outside_source_images_is_invalid():
    data = pipeline_response((12, 13))
    data["detections"][2]["source_image_id"] = 99
    with pytest.raises(InvalidResult, match=r"detections\[2\].*99.*source_images") as info:
        parse_result(data)
    assert info.value.image_id == 12


@pytest.mark.parametrize("bad", ["abc", None, True], ids=repr)
def test_detection_with_unusable_source_image_id_is_invalid(bad):
    data = pipeline_response((12,))
    data["detections"][0]["source_image_id"] = bad
    with pytest.raises(InvalidResult, match=r"detections\[0\]`\.source_image_id"):
        parse_result(data)


def test_detection_that_is_not_an_object_is_invalid():
    data = pipeline_response((12,))
    data["detections"][1] = "moth"
    with pytest.raises(InvalidResult, match=r"detections\[1\]"):
        parse_result(data)


def test_invalid_result_message_is_the_problem():
    with pytest.raises(InvalidResult) as info:
        parse_result({"source_images": [{"id": "abc"}]})
    assert str(info.value) == info.value.problem
    assert "'abc'" in info.value.problem


def test_long_bad_values_are_shortened_in_the_message():
    with pytest.raises(InvalidResult) as info:
        parse_result({"source_images": [{"id": "z" * 5000}]})
    assert len(info.value.problem) < 200


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"image_id": 5, "source_images": [{"id": 9}]}, 5),
        ({"image_id": "5"}, 5),
        ({"source_images": [{"id": 9}, {"id": 10}]}, 9),
        ({"source_images": [{"id": "9"}]}, 9),
        ({"image_id": "abc", "source_images": [{"id": 9}]}, 9),
        ({"image_id": True, "source_images": [{"id": 9}]}, 9),
        ({"image_id": None, "source_images": [{"id": 9}]}, 9),
        ({"source_images": [9]}, None),
        ({"source_images": []}, None),
        ({"source_images": "9"}, None),
        ({"image_id": "abc"}, None),
        ({}, None),
        ([{"id": 9}], None),
        (None, None),
    ],
    ids=repr,
)
def test_best_image_id(data, expected):
    assert best_image_id(data) == expected
